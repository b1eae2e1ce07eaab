"""`PromptBuilder`: the part of `prepare()` every family shares.

The base owns the waveform checks (load, resample, downmix, length limits, the
shortest clip that yields an audio token), batching, padding (on the
tokenizer's side), span bookkeeping and the `PreparedInput`; a family builds
one row at a time (`build_row`) through its own processor or template and says
how many audio tokens a clip gives (`audio_tokens`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import numpy as np
import torch
from torch import Tensor

from lalm_lens.config import LALMConfig
from lalm_lens.inputs.audio import AudioError, limit_duration, load_waveform
from lalm_lens.inputs.prepared import PreparedInput


@dataclass
class Row:
    """One item as its family builds it."""

    ids: list[int]
    text: str  # the rendered input (a string answer is tokenised as its continuation)
    spans: dict[str, tuple[int, int]]  # token ranges: prompt, options, answer_prefix, transcript, ...
    features: dict[str, Tensor] = field(default_factory=dict)  # audio tensors, leading axis concatenated over rows
    audio_seconds: Optional[list[float]] = None  # each audio position's start time; None: not aligned in time
    meta: dict[str, Any] = field(default_factory=dict)  # per-row extras (kept in `meta[key]` as a list over rows)


def _as_list(value, n: int, what: str) -> list:
    if isinstance(value, (list, tuple)):
        if len(value) != n:
            raise ValueError(f"{len(value)} {what} for {n} prompt(s)")
        return list(value)
    return [value] * n


class PromptBuilder(ABC):
    """`prepare()` for one family; subclasses implement `build_row` and `audio_tokens`."""

    per_item: tuple[str, ...] = ()  # extra `prepare` keywords that take one value per item (e.g. "transcript")
    time_aligned = True  # whether audio positions follow the clip in time (not DeSTA's Q-Former queries)

    def __init__(self, tokenizer, config: LALMConfig, sampling_rate: int, processor=None):
        self.tokenizer = tokenizer
        self.processor = processor
        self.config = config
        self.sampling_rate = sampling_rate

    # ------------------------------------------------------------ what a family provides
    @abstractmethod
    def build_row(self, wave: Optional[np.ndarray], prompt: str, *, answer_prefix: Optional[str],
                  options: Optional[Sequence[str]], system: Optional[str], raw: bool, **extra) -> Row:
        """Token ids, spans and audio tensors of one item."""

    @abstractmethod
    def audio_tokens(self, n_samples: int) -> int:
        """Audio positions a clip of `n_samples` (at `sampling_rate`) gives."""

    @property
    def max_seconds(self) -> Optional[float]:
        return self.config.max_audio_seconds

    @property
    def padding_side(self) -> str:
        return getattr(self.tokenizer, "padding_side", "left")

    @property
    def pad_token_id(self) -> int:
        pad = getattr(self.tokenizer, "pad_token_id", None)
        return pad if pad is not None else self.tokenizer.eos_token_id

    def str_tokens(self, ids: list[int]) -> list[str]:
        return self.tokenizer.convert_ids_to_tokens(ids)

    # ------------------------------------------------------------ shared
    def min_seconds(self) -> float:
        """The shortest clip that gives one audio token."""
        n = 1
        while self.audio_tokens(n) < 1:
            n *= 2
        lo = n // 2
        while lo + 1 < n:  # the first n with a token lies in (lo, n]
            mid = (lo + n) // 2
            lo, n = (lo, mid) if self.audio_tokens(mid) >= 1 else (mid, n)
        return n / self.sampling_rate

    def load_audio(self, audio, sampling_rate: Optional[int]) -> np.ndarray:
        """A checked mono waveform at the model's rate, cut to the model's limit, long enough for one token."""
        wave = load_waveform(audio, sampling_rate, self.sampling_rate)
        wave = limit_duration(wave, self.sampling_rate, self.max_seconds, f"{self.config.family}")
        if self.audio_tokens(len(wave)) < 1:
            raise AudioError(
                f"the clip lasts {1000 * len(wave) / self.sampling_rate:.1f} ms; {self.config.family} needs at least "
                f"{1000 * self.min_seconds():.1f} ms of audio for one audio token"
            )
        return wave

    def prepare(
        self,
        audio=None,
        prompt=None,
        *,
        answer_prefix=None,
        sampling_rate: Optional[int] = None,
        options: Optional[Sequence[str]] = None,
        system: Optional[str] = None,
        raw: bool = False,
        **extra,
    ) -> PreparedInput:
        """Build the model input for one item or a batch (lists of audio, prompts, answer prefixes)."""
        unknown = set(extra) - set(self.per_item)
        if unknown:
            raise TypeError(f"prepare() got unexpected keyword(s) {sorted(unknown)} for {self.config.family}")
        if prompt is None:
            raise ValueError("prepare() needs a prompt")
        prompts = list(prompt) if isinstance(prompt, (list, tuple)) else [prompt]
        n = len(prompts)
        audios = (list(audio) if isinstance(audio, (list, tuple)) else [audio]) if audio is not None else []
        if audios and len(audios) != n:
            raise ValueError(f"{len(audios)} audio clip(s) for {n} prompt(s)")
        prefixes = _as_list(answer_prefix, n, "answer prefixes")
        per_item = {k: _as_list(v, n, k) for k, v in extra.items()}
        waves = [self.load_audio(a, sampling_rate) for a in audios] or [None] * n
        rows = [self.build_row(w, p, answer_prefix=a, options=options, system=system, raw=raw,
                               **{k: v[i] for k, v in per_item.items()})
                for i, (w, p, a) in enumerate(zip(waves, prompts, prefixes))]
        inp = self.assemble(rows, waves if audios else [None] * n)
        resolved = {k: [r.meta.get(k, per_item.get(k, [None] * n)[i]) for i, r in enumerate(rows)] for k in self.per_item}
        single = not isinstance(prompt, (list, tuple))
        inp.prepare_kwargs = dict(prompt=prompt, answer_prefix=answer_prefix, options=options, system=system, raw=raw,
                                  **{k: v[0] if single else v for k, v in resolved.items()})
        inp.meta["options"] = list(options) if options else None
        return inp

    def assemble(self, rows: list[Row], waves: list) -> PreparedInput:
        """Pad the rows into one batch (on the tokenizer's padding side) and gather their tensors."""
        width = max(len(r.ids) for r in rows)
        ids = torch.full((len(rows), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        spans, positions = [], []
        slots = self.audio_slot_ids()
        for i, row in enumerate(rows):
            shift = width - len(row.ids) if self.padding_side == "left" else 0
            ids[i, shift : shift + len(row.ids)] = torch.tensor(row.ids, dtype=torch.long)
            mask[i, shift : shift + len(row.ids)] = 1
            spans.append({k: (a + shift, b + shift) for k, (a, b) in row.spans.items()})
            positions.append(torch.isin(ids[i], slots).nonzero()[:, 0])
        tensors = {"input_ids": ids, "attention_mask": mask}
        for key in dict.fromkeys(k for r in rows for k in r.features):
            tensors[key] = torch.cat([r.features[key] for r in rows])
        seconds = [None if r.audio_seconds is None else torch.tensor(r.audio_seconds, dtype=torch.float64) for r in rows]
        meta: dict[str, Any] = {"family": self.config.family, "audio_seconds": seconds if self.time_aligned else None}
        for key in dict.fromkeys(k for r in rows for k in r.meta):
            meta[key] = [r.meta.get(key) for r in rows]
        return PreparedInput(
            tensors=tensors, waveforms=waves, sampling_rate=self.sampling_rate, texts=[r.text for r in rows],
            audio_positions=positions, str_tokens=[self.str_tokens(row.tolist()) for row in ids], spans=spans, meta=meta,
        )

    def audio_slot_ids(self) -> Tensor:
        """Token ids the model fills with audio vectors."""
        return torch.tensor([self.config.audio_token_id, *self.config.extra.get("audio_span_ids", ())])

    token_seconds = 0.04  # audio per token (25 Hz: Whisper frames at 100 Hz, conv stride 2, pool 2)

    def token_times(self, n_samples: int) -> list[float]:
        """Start time (s) of each audio position a clip gives, in order (a family may override)."""
        return [k * self.token_seconds for k in range(self.audio_tokens(n_samples))]
