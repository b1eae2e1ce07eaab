"""`PreparedInput`: model tensors plus what later analysis needs to know about them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from typing import Any, Iterator, Optional

import numpy as np
import torch
from torch import Tensor


@dataclass
class PreparedInput(Mapping):
    """The tensors a model call takes, with the waveform and the token layout.

    It is a mapping over the tensors, so `model(inp)` and `model(**inp)` both
    work. `audio_positions[b]` holds the sequence indices filled with audio
    vectors in row b; `spans[b]` maps names ("prompt", "options", "answer_prefix",
    "transcript", ...) to `(start, stop)` token ranges; `prepare_kwargs` re-creates
    the input from another waveform (see `HookedLALM.prepare_like`).
    """

    tensors: dict[str, Tensor]
    waveforms: list[Optional[np.ndarray]]
    sampling_rate: int
    texts: list[str]
    audio_positions: list[Tensor]
    str_tokens: list[list[str]]
    spans: list[dict[str, tuple[int, int]]] = field(default_factory=list)
    prepare_kwargs: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)

    # Mapping interface over the model tensors.
    def __getitem__(self, key: str) -> Tensor:
        return self.tensors[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.tensors)

    def __len__(self) -> int:
        return len(self.tensors)

    @property
    def input_ids(self) -> Tensor:
        return self.tensors["input_ids"]

    @property
    def shape(self) -> torch.Size:
        """The token ids' `[batch, pos]`, so token-only tools (`transformer_lens.patching`) take a prepared input."""
        return self.input_ids.shape

    @property
    def batch_size(self) -> int:
        return self.input_ids.shape[0]

    @property
    def seq_len(self) -> int:
        return self.input_ids.shape[1]

    @property
    def waveform(self) -> Optional[np.ndarray]:
        """The (first) clip's mono waveform at `sampling_rate`."""
        return self.waveforms[0] if self.waveforms else None

    def to(self, device: torch.device | str) -> "PreparedInput":
        return replace(self, tensors={k: v.to(device) for k, v in self.tensors.items()})

    def __repr__(self) -> str:
        shapes = ", ".join(f"{k}={tuple(v.shape)}" for k, v in self.tensors.items())
        n_audio = [len(p) for p in self.audio_positions]
        return f"PreparedInput({shapes}, audio_tokens={n_audio}, sampling_rate={self.sampling_rate})"


def batch_items(audio, prompt, answer_prefix) -> tuple[list, list[str], list]:
    """Normalise `prepare()` arguments to equal-length lists: (audios or [], prompts, answer prefixes)."""
    if prompt is None:
        raise ValueError("prepare() needs a prompt")
    prompts = list(prompt) if isinstance(prompt, (list, tuple)) else [prompt]
    audios = (list(audio) if isinstance(audio, (list, tuple)) else [audio]) if audio is not None else []
    if audios and len(audios) != len(prompts):
        raise ValueError(f"{len(audios)} audio clip(s) for {len(prompts)} prompt(s)")
    prefixes = list(answer_prefix) if isinstance(answer_prefix, (list, tuple)) else [answer_prefix] * len(prompts)
    if len(prefixes) != len(prompts):
        raise ValueError(f"{len(prefixes)} answer prefixes for {len(prompts)} prompts")
    return audios, prompts, prefixes
