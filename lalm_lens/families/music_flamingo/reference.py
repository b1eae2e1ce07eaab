"""The original `MusicFlamingoForConditionalGeneration`, fed our prepared inputs.

It takes its inputs as Audio Flamingo 3 does (the frame mask as `input_features_mask`,
features cast to its dtype) and returns the projected audio vectors the same way,
so AF3's `forward` serves; only the class differs.
"""

from __future__ import annotations

from lalm_lens.families.audio_flamingo3.reference import forward
from lalm_lens.families.base import Reference
from lalm_lens.families.hf import hf_reference

_BASE = hf_reference("MusicFlamingoForConditionalGeneration", encoder="model.audio_tower")

REFERENCE = Reference(_BASE.load, _BASE.encoder_layers, forward)
