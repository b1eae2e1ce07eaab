"""Voxtral Realtime rows through the checkpoint's `VoxtralRealtimeProcessor` (offline streaming mode).

The processor pads the clip with `n_left` tokens of silence before it and the
delay plus a buffer after it (80 ms per token) and returns the prefill
`<s> [STREAMING_PAD] x (n_left + delay)`; position p hears audio step p. So the
layout in time is: `<s>` and the first `n_left - 1` pads hear the left silence
("template"), the pads from position `n_left` on hear the clip's first
`delay + 1` steps ("audio", the model listening before it may speak), and an
`answer_prefix` — the transcript so far — follows, one token per step
("transcript"). `meta["position_seconds"][b]` gives every position's start time
in the clip (negative in the left silence); `audio_seconds` those of the audio
positions. Voxtral Realtime transcribes: it takes no prompt, system text or options.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from lalm_lens.inputs.builder import PromptBuilder, Row
from lalm_lens.inputs.prepared import PreparedInput

DELAY = "num_delay_tokens"


class RealtimePrompts(PromptBuilder):
    """`prepare(audio, answer_prefix=...)` for Voxtral Realtime (rows right-padded, to stay aligned in time)."""

    def __init__(self, processor, config):
        super().__init__(processor.tokenizer, config, processor.feature_extractor.sampling_rate, processor)
        self.n_left = processor.mistral_common_audio_config.n_left_pad_tokens
        self.delay = processor.num_delay_tokens
        self.samples_per_token = processor.raw_audio_length_per_tok
        self.token_seconds = self.samples_per_token / self.sampling_rate

    @property
    def padding_side(self) -> str:
        return "right"  # position p must keep audio step p

    def audio_tokens(self, n_samples: int) -> int:
        return -(-n_samples // self.samples_per_token)

    def prepare(self, audio=None, prompt=None, **kwargs) -> PreparedInput:
        prompts = prompt if isinstance(prompt, (list, tuple)) else [prompt]
        if any(p not in (None, "") for p in prompts):
            raise ValueError("Voxtral Realtime takes no prompt: it transcribes the audio stream. Pass prompt=None "
                             "(and the transcript so far as answer_prefix)")
        if audio is None:
            raise ValueError("Voxtral Realtime needs audio: every position hears one 80 ms step of it")
        empty = [""] * len(prompts) if isinstance(prompt, (list, tuple)) else ""
        if isinstance(audio, (list, tuple)) and not isinstance(prompt, (list, tuple)):
            empty = [""] * len(audio)
        return super().prepare(audio, empty, **kwargs)

    def build_row(self, wave: Optional[np.ndarray], prompt: str, *, answer_prefix, options: Optional[Sequence[str]],
                  system, raw: bool) -> Row:
        if raw or system or options:
            raise ValueError("Voxtral Realtime takes no raw prompt, system prompt or options (it has no instruction)")
        out = self.processor(wave, sampling_rate=self.sampling_rate, return_tensors="pt")
        ids = out["input_ids"][0].tolist()
        prefill = len(ids)
        if answer_prefix:
            ids += list(self.tokenizer.encode(answer_prefix, add_special_tokens=False))
        spans = {"answer_prefix": (prefill, len(ids)), "transcript": (prefill, len(ids))} if answer_prefix else {}
        seconds = [(p - self.n_left) * self.token_seconds for p in range(len(ids))]
        audio = range(self.n_left, prefill)
        meta = {"position_seconds": torch.tensor(seconds, dtype=torch.float64), DELAY: int(out[DELAY])}
        return Row(ids, self.tokenizer.decode(ids), spans, {"input_features": out["input_features"]},
                   [seconds[p] for p in audio], meta)

    def assemble(self, rows: list[Row], waves: list) -> PreparedInput:
        """Features right-padded with silence frames (the processor pads a batch's waveforms alike)."""
        frames = max(r.features["input_features"].shape[-1] for r in rows)
        for row in rows:
            f = row.features["input_features"]
            row.features["input_features"] = torch.cat([f, f[..., -1:].expand(*f.shape[:-1], frames - f.shape[-1])], -1)
        inp = super().assemble(rows, waves)
        inp.tensors[DELAY] = torch.tensor(rows[0].meta[DELAY])
        prefill = [r.spans.get("transcript", (len(r.ids),))[0] for r in rows]
        inp.audio_positions = [torch.arange(self.n_left, p) for p in prefill]
        return inp
