"""Qwen2-Audio (`Qwen/Qwen2-Audio-7B`, `-Instruct`): the worked example of a family.

Conversion in `weight_conversion/qwen2_audio.py`; prompts through the
checkpoint's own `Qwen2AudioProcessor` and chat template; checked against
`transformers`' `Qwen2AudioForConditionalGeneration`.
"""

from __future__ import annotations

from lalm_lens.families.base import Family
from lalm_lens.families.hf import hf_reference, processor_prompts
from lalm_lens.inputs.hf_processor import HFProcessorPrompts
from weight_conversion import qwen2_audio as conversion

QWEN2_AUDIO = Family.from_conversion(
    conversion,
    name="qwen2_audio",
    model_types=("qwen2_audio",),
    prompts=processor_prompts(HFProcessorPrompts),
    reference=hf_reference("Qwen2AudioForConditionalGeneration"),
)
