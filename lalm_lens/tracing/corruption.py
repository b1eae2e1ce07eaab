"""Corrupted runs: silence, waveform noise at an SNR, a swapped clip, or ROME's embedding noise.

Waveform corruptions re-prepare the same prompt with other audio of the same
length, so the number of audio tokens (and every position) is unchanged.
`noise` keeps the clean input and adds Gaussian noise of `noise_scale` x σ
(σ: the standard deviation of the clean audio vectors) at `hook_audio_embeds`,
`n_samples` seeded draws whose probabilities are averaged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional

import numpy as np
import torch
from torch import Tensor

from lalm_lens.inputs.audio import load_waveform

CORRUPTIONS = ("silence", "noise", "snr", "swap")


@dataclass
class Corruption:
    inputs: Mapping  # the corrupted run's model inputs
    noise: Optional[Tensor] = None  # [n_samples, n_audio_tokens, d_model] added at hook_audio_embeds
    description: str = ""
    clean_audio: Optional[Tensor] = None  # the clean audio vectors, when already computed (noise)

    @property
    def n_runs(self) -> int:
        return 1 if self.noise is None else self.noise.shape[0]


def _require_waveform(clean, corruption: str):
    if getattr(clean, "waveform", None) is None or not hasattr(clean, "prepare_kwargs"):
        raise ValueError(
            f"corruption={corruption!r} rebuilds the input from its waveform: pass a PreparedInput from "
            "model.prepare(...) as `clean`, or pass `corrupted=` explicitly"
        )
    return clean.waveform


def fit_length(wave: np.ndarray, n: int) -> np.ndarray:
    """Trim or zero-pad `wave` to `n` samples."""
    return wave[:n] if len(wave) >= n else np.pad(wave, (0, n - len(wave)))


def make_corruption(
    model,
    clean,
    corrupted=None,
    corruption: str = "silence",
    *,
    audio_embeds: Optional[Tensor] = None,
    noise_scale: float = 3.0,
    n_samples: int = 10,
    seed: int = 0,
    snr_db: float = 0.0,
    swap_audio=None,
) -> Corruption:
    """The corrupted run for `clean` (`corrupted` given explicitly wins)."""
    if corrupted is not None:
        return Corruption(corrupted, description="given")
    if corruption not in CORRUPTIONS:
        raise ValueError(f"unknown corruption {corruption!r}; choose from {CORRUPTIONS}")
    if corruption == "noise":
        if audio_embeds is None and clean.get("input_features") is not None:
            with torch.no_grad():
                audio_embeds = model.encode_audio(clean["input_features"], clean.get("feature_attention_mask"))
        if audio_embeds is None or audio_embeds.numel() == 0:
            raise ValueError("corruption='noise' needs audio in the clean input")
        sigma = audio_embeds.float().std().item()
        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn((n_samples, *audio_embeds.shape), generator=gen) * (noise_scale * sigma)
        return Corruption(clean, noise.to(audio_embeds.device, audio_embeds.dtype),
                          f"noise {noise_scale} x sigma ({sigma:.4g}) on the audio vectors, {n_samples} samples, seed {seed}",
                          clean_audio=audio_embeds)
    wave = _require_waveform(clean, corruption)
    if corruption == "silence":
        new, what = np.zeros_like(wave), "silence of the same length"
    elif corruption == "snr":
        import torchaudio.functional as AF

        gen = torch.Generator().manual_seed(seed)
        noise = torch.randn(len(wave), generator=gen)
        new = AF.add_noise(torch.from_numpy(wave)[None], noise[None], torch.tensor([float(snr_db)]))[0].numpy()
        what = f"white noise at {snr_db:g} dB SNR (seed {seed})"
    else:
        if swap_audio is None:
            raise ValueError("corruption='swap' needs swap_audio= (a path or array of another clip)")
        other = load_waveform(swap_audio, None if isinstance(swap_audio, str) else clean.sampling_rate, clean.sampling_rate)
        new, what = fit_length(other, len(wave)), "another clip, trimmed/padded to the same length"
    return Corruption(model.prepare_like(clean, new), description=what)


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


def repeat_inputs(inputs: Mapping, n: int) -> dict[str, Tensor]:
    """Each tensor repeated `n` times along its first axis (rows, or audio chunks)."""
    return {k: v.repeat(n, *[1] * (v.ndim - 1)) if n > 1 else v for k, v in inputs.items() if isinstance(v, Tensor)}


def noise_hooks(noise) -> list:
    if noise is None:
        return []
    flat = noise.reshape(-1, noise.shape[-1])
    return [("hook_audio_embeds", lambda x, hook: x + flat.to(x.dtype))]
