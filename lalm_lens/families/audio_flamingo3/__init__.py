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
from lalm_lens.inputs.hf_processor import load_processor
from weight_conversion import audio_flamingo3 as conversion


def prompts(ckpt, config, hf_config):
    processor = load_processor(ckpt.folder)
    return AudioFlamingo3Prompts(processor, config) if processor is not None else None


AUDIO_FLAMINGO3 = Family(
    name="audio_flamingo3",
    model_types=("audioflamingo3",),
    convert_config=conversion.convert_config,
    key_map=conversion.key_map,
    absent=conversion.ABSENT,
    prompts=prompts,
    reference=REFERENCE,
)
