"""Audio Flamingo 3 (`nvidia/audio-flamingo-3-hf`).

Conversion in `weight_conversion/audio_flamingo3.py`; prompts through the
checkpoint's own `AudioFlamingo3Processor` and chat template (`prompts.py`);
checked against `transformers`' `AudioFlamingo3ForConditionalGeneration`
(`reference.py`).
"""

from __future__ import annotations

from lalm_lens.families.audio_flamingo3.prompts import AudioFlamingo3Prompts
from lalm_lens.families.audio_flamingo3.reference import REFERENCE
from lalm_lens.families.base import Family
from lalm_lens.families.hf import processor_prompts
from weight_conversion import audio_flamingo3 as conversion

AUDIO_FLAMINGO3 = Family.from_conversion(
    conversion,
    name="audio_flamingo3",
    model_types=("audioflamingo3",),
    prompts=processor_prompts(AudioFlamingo3Prompts),
    reference=REFERENCE,
)
