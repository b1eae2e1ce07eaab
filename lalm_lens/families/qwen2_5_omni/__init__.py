"""Qwen2.5-Omni thinker (`Qwen/Qwen2.5-Omni-7B`, `-3B`), audio + text.

Conversion in `weight_conversion/qwen2_5_omni.py` (chunked audio encoder,
multimodal RoPE); prompts through the checkpoint's `Qwen2_5OmniProcessor`
(`prompts.py`); checked against `transformers`' `Qwen2_5OmniThinkerForConditionalGeneration`
(`reference.py`). A full Omni checkpoint (`model_type` "qwen2_5_omni") is read for its
thinker only: its config's `thinker_config`, and only the shards holding thinker keys
(never the talker's or the vocoder's).
"""

from __future__ import annotations

from lalm_lens.families.base import Family, read_hf_config
from lalm_lens.families.qwen2_5_omni.prompts import OmniPrompts, load_omni_processor
from lalm_lens.families.qwen2_5_omni.reference import REFERENCE
from weight_conversion import qwen2_5_omni as conversion


def read_config(ckpt):
    """The thinker's config, from a full Omni folder or a thinker-only one. Its end-of-sequence id sits at
    the thinker level (where `transformers` reads it), so it is copied to the text config we read it from."""
    thinker = conversion.thinker_config(read_hf_config(ckpt))
    if getattr(thinker, "eos_token_id", None) is not None:
        thinker.text_config.eos_token_id = thinker.eos_token_id
    return thinker


def prompts(ckpt, config, hf_config):
    processor = load_omni_processor(ckpt.folder)
    return OmniPrompts(processor, config) if processor is not None else None


QWEN2_5_OMNI = Family.from_conversion(
    conversion,
    name="qwen2_5_omni",
    model_types=("qwen2_5_omni", "qwen2_5_omni_thinker"),
    prompts=prompts,
    reference=REFERENCE,
    read_config=read_config,
    shard_filter=conversion.is_thinker_key,
)
