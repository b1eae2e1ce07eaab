"""Voxtral (`mistralai/Voxtral-Mini-3B-2507`, `-Small-24B-2507`).

Conversion in `weight_conversion/voxtral.py`; prompts through `mistral_common`
(`prompts.py`); checked against `transformers`' `VoxtralForConditionalGeneration`.
"""

from __future__ import annotations

from lalm_lens.families.base import Family
from lalm_lens.families.hf import hf_reference
from lalm_lens.families.voxtral.prompts import VoxtralPrompts
from lalm_lens.inputs.hf_processor import load_processor
from weight_conversion import voxtral as conversion


def prompts(ckpt, config, hf_config):
    processor = load_processor(ckpt.folder)
    return VoxtralPrompts(processor, config) if processor is not None else None


VOXTRAL = Family(
    name="voxtral",
    model_types=("voxtral",),
    convert_config=conversion.convert_config,
    key_map=conversion.key_map,
    absent=conversion.ABSENT,
    prompts=prompts,
    reference=hf_reference("VoxtralForConditionalGeneration", drop=("feature_attention_mask",)),
)
