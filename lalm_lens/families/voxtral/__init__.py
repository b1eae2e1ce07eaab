"""Voxtral (`mistralai/Voxtral-Mini-3B-2507`, `-Small-24B-2507`).

Conversion in `weight_conversion/voxtral.py`; prompts through `mistral_common`
(`prompts.py`); checked against `transformers`' `VoxtralForConditionalGeneration`.
"""

from __future__ import annotations

from lalm_lens.families.base import Family
from lalm_lens.families.hf import hf_reference, processor_prompts
from lalm_lens.families.voxtral.prompts import VoxtralPrompts
from weight_conversion import voxtral as conversion

VOXTRAL = Family.from_conversion(
    conversion,
    name="voxtral",
    model_types=("voxtral",),
    prompts=processor_prompts(VoxtralPrompts),
    reference=hf_reference("VoxtralForConditionalGeneration", drop=("feature_attention_mask",)),
)
