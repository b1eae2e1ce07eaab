"""Turning audio and prompts into model inputs."""

from lalm_lens.inputs.audio import AudioError, load_waveform
from lalm_lens.inputs.prepared import PreparedInput

__all__ = ["AudioError", "PreparedInput", "load_waveform"]
