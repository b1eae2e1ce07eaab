"""Qwen2-Audio (`Qwen/Qwen2-Audio-7B`, `-Instruct`): the worked example of a family.

Conversion in `weight_conversion/qwen2_audio.py`; prompts through the
checkpoint's own `Qwen2AudioProcessor` and chat template; checked against
`transformers`' `Qwen2AudioForConditionalGeneration`.
"""

from __future__ import annotations

from lalm_lens.families.base import Family
from lalm_lens.families.hf import hf_reference
from lalm_lens.inputs.hf_processor import HFProcessorPrompts, load_processor
from weight_conversion import qwen2_audio as conversion


def prompts(ckpt, config, hf_config):
    processor = load_processor(ckpt.folder)
    return HFProcessorPrompts(processor, config) if processor is not None else None


QWEN2_AUDIO = Family(
    name="qwen2_audio",
    model_types=("qwen2_audio",),
    convert_config=conversion.convert_config,
    key_map=conversion.key_map,
    absent=conversion.ABSENT,
    prompts=prompts,
    reference=hf_reference("Qwen2AudioForConditionalGeneration"),
)
