"""Turn whatever the user passes as audio into a checked mono float32 waveform.

Policy (each case is tested):
- a path is read with soundfile at its own rate; an array/tensor without a
  `sampling_rate` is taken to be at the model's rate, with a warning;
- another rate is resampled with torchaudio;
- several channels are downmixed to mono by averaging, with a warning (a 2-D
  array is read as `[channels, time]` when its first axis is the shorter, as
  torchaudio returns it, else as soundfile's `[time, channels]`);
- empty audio, audio with NaN/inf samples, a file that is not audio, or a
  sampling rate <= 0 raises `AudioError`;
- float samples far outside [-1, 1] (int16 values stored as floats) warn;
- bfloat16/float16 tensors are read as float32.
Length limits are the family's business (see `limit_duration`, and the
shortest clip a family accepts in `PromptBuilder.load_audio`).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Union

import numpy as np
import torch

AudioLike = Union[str, os.PathLike, np.ndarray, torch.Tensor]


class AudioError(ValueError):
    """The audio cannot be used as given."""


def load_waveform(audio: AudioLike, sampling_rate: int | None, target_rate: int) -> np.ndarray:
    """Return a mono float32 waveform at `target_rate`."""
    if sampling_rate is not None and (isinstance(sampling_rate, bool) or not sampling_rate > 0):
        raise AudioError(f"sampling_rate must be a positive number of samples per second, got {sampling_rate!r}")
    if isinstance(audio, (str, os.PathLike)):
        import soundfile

        path = Path(audio)
        if not path.is_file():
            raise AudioError(f"audio file not found: {path}")
        try:
            data, file_rate = soundfile.read(str(path), dtype="float32", always_2d=True)
        except Exception as err:  # libsndfile: unknown format, truncated header, ...
            raise AudioError(f"{path} is not a readable audio file ({str(err).splitlines()[0]})") from None
        if sampling_rate is not None and sampling_rate != file_rate:
            warnings.warn(f"{path.name} is recorded at {file_rate} Hz; ignoring sampling_rate={sampling_rate}")
        wave, rate = data.T, file_rate  # [channels, time]
    else:
        if isinstance(audio, torch.Tensor):
            wave = (audio.detach().float() if audio.is_floating_point() else audio.detach()).cpu().numpy()
        else:
            wave = np.asarray(audio)
        if sampling_rate is None:
            warnings.warn(
                f"no sampling_rate given with the audio array; assuming the model's {target_rate} Hz "
                "(pass sampling_rate= to have it resampled)"
            )
        rate = sampling_rate or target_rate
    wave = _as_float(wave)
    wave = _to_mono(wave)
    if wave.size == 0:
        raise AudioError("the audio is empty (0 samples)")
    if not np.isfinite(wave).all():
        bad = int((~np.isfinite(wave)).sum())
        raise AudioError(f"the audio holds {bad} NaN or infinite sample(s)")
    peak = float(np.abs(wave).max())
    if peak > 2.0:
        warnings.warn(f"the audio's peak is {peak:.4g}, far outside [-1, 1]: float samples are expected in [-1, 1] "
                      "(int16 values stored as floats? divide by 32768)")
    if rate != target_rate:
        import torchaudio.functional as AF

        wave = AF.resample(torch.from_numpy(wave), int(rate), int(target_rate)).numpy()
    return np.ascontiguousarray(wave, dtype=np.float32)


def limit_duration(wave: np.ndarray, rate: int, max_seconds: float | None, what: str) -> np.ndarray:
    """Cut audio longer than `max_seconds`, with a warning naming the model's behaviour."""
    if max_seconds is None or wave.shape[-1] <= max_seconds * rate:
        return wave
    warnings.warn(
        f"the audio lasts {wave.shape[-1] / rate:.1f} s; {what} takes at most {max_seconds:g} s, "
        f"so it is truncated to the first {max_seconds:g} s (as the Hugging Face processor does)"
    )
    return wave[: int(max_seconds * rate)]


def _as_float(wave: np.ndarray) -> np.ndarray:
    if wave.dtype.kind == "i":
        return wave.astype(np.float32) / float(np.iinfo(wave.dtype).max + 1)
    if wave.dtype.kind == "u":
        info = np.iinfo(wave.dtype)
        return (wave.astype(np.float32) - (info.max + 1) / 2) / ((info.max + 1) / 2)
    if wave.dtype.kind != "f":
        raise AudioError(f"audio samples must be numbers, got dtype {wave.dtype}")
    return wave.astype(np.float32, copy=False)


def _to_mono(wave: np.ndarray) -> np.ndarray:
    if wave.ndim == 1:
        return wave
    if wave.ndim != 2:
        raise AudioError(f"audio must be 1-D (time) or 2-D (channels x time), got shape {wave.shape}")
    if wave.shape[0] > wave.shape[1]:
        wave = wave.T  # soundfile layout [time, channels]
    if wave.shape[0] == 1:
        return wave[0]
    warnings.warn(f"the audio has {wave.shape[0]} channels; downmixed to mono by averaging them")
    return wave.mean(axis=0)
