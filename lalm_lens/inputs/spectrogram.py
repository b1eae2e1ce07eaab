"""A small log-mel spectrogram of a clip, for figures and pages (not the model's features)."""

from __future__ import annotations

import math

import numpy as np
import torch


def spectrogram(wave: np.ndarray, rate: int, n_mels: int = 40, max_frames: int = 400) -> list[list[float]]:
    """A small log-mel spectrogram of the clip (for the figure), `[n_mels, frames]`."""
    import torchaudio

    hop = max(160, int(math.ceil(len(wave) / max_frames)))
    mel = torchaudio.transforms.MelSpectrogram(rate, n_fft=max(400, 2 ** int(math.ceil(math.log2(hop)))),
                                               hop_length=hop, n_mels=n_mels)(torch.from_numpy(wave).float())
    return torch.log10(mel.clamp(min=1e-8)).tolist()
