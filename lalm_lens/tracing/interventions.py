"""Corruptions as values: each knows how to build the corrupted run of a clean input.

    Silence()                                   zeros of the same length (the paper's)
    GaussianNoise(scale=3, n_samples=10, seed=0)  ROME's noise on the audio vectors (`hook_audio_embeds`)
    WhiteNoise(snr_db=0, seed=0)                white noise added to the waveform at an SNR
    Swap(audio)                                 another clip, trimmed or zero-padded to the same length
    Given(inputs)                               a corrupted input you built yourself

The strings "silence", "noise", "snr" are shorthands for the defaults. Waveform
corruptions re-prepare the same prompt with other audio of the same length, so
every position is unchanged.
"""

from __future__ import annotations

import math
import os
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional, Union

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from lalm_lens.inputs.audio import load_waveform
from lalm_lens.tracing.checks import no_audio
from lalm_lens.tracing.content import audio_sha1

if TYPE_CHECKING:
    from lalm_lens.interface import LALM


@dataclass
class CorruptedRun:
    """The corrupted run of one item: its model inputs, and noise added at `hook_audio_embeds` (if any)."""

    inputs: Mapping
    noise: Optional[Float[Tensor, "n_samples n_audio d_model"]] = None
    description: str = ""

    @property
    def n_runs(self) -> int:
        return 1 if self.noise is None else self.noise.shape[0]

    @property
    def on_audio_vectors(self) -> bool:
        """Whether the corruption is noise on the audio vectors (the clip itself, and so the encoder's
        output, is the clean one)."""
        return self.noise is not None

    def batch(self) -> dict[str, Tensor]:
        """The inputs repeated once per noise sample (tensors only)."""
        return repeat_inputs(self.inputs, self.n_runs)

    def hooks(self) -> list:
        """The forward hooks that add the noise (none for waveform corruptions)."""
        if self.noise is None:
            return []
        flat = self.noise.reshape(-1, self.noise.shape[-1])
        return [("hook_audio_embeds", lambda x, hook: x + flat.to(x.device, x.dtype))]

    def with_audio_vectors(self, audio: Float[Tensor, "n_audio d_model"]) -> dict[str, Tensor]:
        """`batch()` with the corrupted audio vectors given (`audio_embeds`, no encoder inputs): the clean
        `audio` plus each noise sample — the run of `batch()` and `hooks()` without encoding the clip once per
        sample. Only for noise on the audio vectors (`on_audio_vectors`)."""
        if not self.on_audio_vectors:
            raise ValueError(f"{self.description or 'this corruption'} is not noise on the audio vectors")
        inputs = {k: v for k, v in self.batch().items() if k not in ("input_features", "feature_attention_mask")}
        inputs["audio_embeds"] = audio.repeat(self.n_runs, 1) + self.noise.reshape(-1, audio.shape[-1]).to(audio.dtype)
        return inputs


def repeat_inputs(inputs: Mapping, n: int) -> dict[str, Tensor]:
    """Each tensor repeated `n` times along its first axis (rows, or audio chunks)."""
    return {k: v.repeat(n, *[1] * (v.ndim - 1)) if n > 1 else v for k, v in inputs.items() if isinstance(v, Tensor)}


class Corruption(ABC):
    """How to corrupt the audio of a clean input."""

    @abstractmethod
    def apply(self, model: "LALM", clean) -> CorruptedRun:
        """The corrupted run for `clean` (a `PreparedInput` for waveform corruptions)."""

    def check(self) -> None:
        """Raise `ValueError` on settings that make no sense (called before any work)."""

    def to_dict(self) -> dict[str, Any]:
        """The settings, for result files and resume checks."""
        return {"kind": type(self).__name__}


def _waveform(clean, what: str) -> np.ndarray:
    if hasattr(clean, "prepare_kwargs") and getattr(clean, "waveform", None) is None:
        raise ValueError(no_audio(what))
    if getattr(clean, "waveform", None) is None or not hasattr(clean, "prepare_kwargs"):
        raise ValueError(
            f"{what} rebuilds the input from its waveform: pass a PreparedInput from model.prepare(...) as `clean`, "
            "or pass the corrupted input yourself (corruption=Given(inputs) or a dict of tensors)"
        )
    return clean.waveform


@dataclass(frozen=True)
class Silence(Corruption):
    """Zeros of the clip's length (the reference study's corruption)."""

    def apply(self, model: "LALM", clean) -> CorruptedRun:
        wave = _waveform(clean, "Silence()")
        return CorruptedRun(model.prepare_like(clean, np.zeros_like(wave)), description="silence of the same length")


@dataclass(frozen=True)
class GaussianNoise(Corruption):
    """ROME's corruption: Gaussian noise of `scale` x σ (σ: the std of the clean audio vectors) added to
    the audio vectors at `hook_audio_embeds`; `n_samples` seeded draws, their scores averaged."""

    scale: float = 3.0
    n_samples: int = 10
    seed: int = 0

    def check(self) -> None:
        if not (isinstance(self.scale, (int, float)) and math.isfinite(self.scale) and self.scale > 0):
            raise ValueError(f"GaussianNoise(scale=...) must be a finite number > 0, got {self.scale!r}")
        if not (isinstance(self.n_samples, int) and self.n_samples >= 1):
            raise ValueError(f"GaussianNoise(n_samples=...) must be an integer >= 1, got {self.n_samples!r}")

    def apply(self, model: "LALM", clean) -> CorruptedRun:
        self.check()
        audio = None
        if clean.get("input_features") is not None:
            with torch.no_grad():
                audio = model.encode_audio(clean["input_features"].to(model.device),
                                           None if clean.get("feature_attention_mask") is None
                                           else clean["feature_attention_mask"].to(model.device),
                                           clean["input_ids"].to(model.device))  # which clip each window is
        if audio is None or audio.numel() == 0:
            raise ValueError(no_audio("GaussianNoise()"))
        sigma = audio.float().std().item()
        gen = torch.Generator().manual_seed(self.seed)
        noise = torch.randn((self.n_samples, *audio.shape), generator=gen) * (self.scale * sigma)
        return CorruptedRun(clean, noise.to(audio.device, audio.dtype),
                            f"noise {self.scale:g} x sigma ({sigma:.4g}) on the audio vectors, {self.n_samples} "
                            f"samples, seed {self.seed}")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "GaussianNoise", "scale": self.scale, "n_samples": self.n_samples, "seed": self.seed}


@dataclass(frozen=True)
class WhiteNoise(Corruption):
    """White noise added to the waveform at `snr_db` (torchaudio's `add_noise`), seeded."""

    snr_db: float = 0.0
    seed: int = 0

    def check(self) -> None:
        if not (isinstance(self.snr_db, (int, float)) and math.isfinite(self.snr_db)):
            raise ValueError(f"WhiteNoise(snr_db=...) must be a finite number, got {self.snr_db!r}")

    def apply(self, model: "LALM", clean) -> CorruptedRun:
        import torchaudio.functional as AF

        self.check()
        wave = _waveform(clean, "WhiteNoise()")
        gen = torch.Generator().manual_seed(self.seed)
        noise = torch.randn(len(wave), generator=gen)
        new = AF.add_noise(torch.from_numpy(wave)[None], noise[None], torch.tensor([float(self.snr_db)]))[0].numpy()
        return CorruptedRun(model.prepare_like(clean, new), description=f"white noise at {self.snr_db:g} dB SNR "
                                                                           f"(seed {self.seed})")

    def to_dict(self) -> dict[str, Any]:
        return {"kind": "WhiteNoise", "snr_db": self.snr_db, "seed": self.seed}


@dataclass(frozen=True)
class Swap(Corruption):
    """Another clip (a path or array), trimmed or zero-padded to the clean clip's length. Its settings
    hold the clip's content hash (the same in every process), not its path or the Python object."""

    audio: Any
    sampling_rate: Optional[int] = None

    def is_file(self) -> bool:
        return isinstance(self.audio, (str, os.PathLike))

    def check(self) -> None:
        if self.is_file() and not Path(self.audio).is_file():
            raise ValueError(f"Swap(audio=...): audio file not found: {self.audio}")
        if not self.is_file() and self.sampling_rate is None:
            warnings.warn("Swap(audio) got an array without sampling_rate; assuming it is at the model's rate "
                          "(pass Swap(audio, sampling_rate=...) to have it resampled)", stacklevel=3)

    def apply(self, model: "LALM", clean) -> CorruptedRun:
        wave = _waveform(clean, "Swap()")
        rate = self.sampling_rate if self.sampling_rate is not None or self.is_file() else clean.sampling_rate
        other = load_waveform(self.audio, rate, clean.sampling_rate)
        fitted = other[: len(wave)] if len(other) >= len(wave) else np.pad(other, (0, len(wave) - len(other)))
        return CorruptedRun(model.prepare_like(clean, fitted), description="another clip, trimmed/padded to the same length")

    def to_dict(self) -> dict[str, Any]:
        out = {"kind": "Swap", "audio_sha1": audio_sha1(self.audio)}
        return out if self.is_file() or self.sampling_rate is None else dict(out, sampling_rate=self.sampling_rate)


@dataclass(frozen=True)
class Given(Corruption):
    """A corrupted input built by hand (a `PreparedInput` or a dict of the model's tensors)."""

    inputs: Mapping = field(repr=False)

    def apply(self, model: "LALM", clean) -> CorruptedRun:
        return CorruptedRun(self.inputs, description="given")


SHORTHANDS = {"silence": Silence, "noise": GaussianNoise, "snr": WhiteNoise}


def as_corruption(corruption: Union[str, Corruption, Mapping, None]) -> Corruption:
    """A `Corruption` from a value, a shorthand string, or explicit corrupted inputs."""
    if corruption is None:
        return Silence()
    if isinstance(corruption, Corruption):
        corruption.check()
        return corruption
    if isinstance(corruption, Mapping):
        return Given(corruption)
    if corruption == "swap":
        raise ValueError("corruption='swap' needs the other clip: pass corruption=Swap(audio)")
    if isinstance(corruption, str) and corruption in SHORTHANDS:
        return SHORTHANDS[corruption]()
    raise ValueError(f"unknown corruption {corruption!r}; choose from {sorted(SHORTHANDS) + ['swap']} or pass "
                     "Silence(), GaussianNoise(...), WhiteNoise(...), Swap(audio) or Given(inputs)")


def check_same_layout(clean: Mapping, corrupted: Mapping) -> None:
    """Patching position i copies state i: both runs must have the same token layout."""
    a, b = clean["input_ids"], corrupted["input_ids"]
    if a.shape != b.shape:
        raise ValueError(
            f"the corrupted input has {b.shape[-1]} tokens and the clean one {a.shape[-1]}: patching needs the same "
            "positions (the same number of audio tokens; use audio of the same length)"
        )
    if a.shape[0] != 1:
        raise ValueError(f"trace one item at a time (got a batch of {a.shape[0]}); use trace_dataset for many")
