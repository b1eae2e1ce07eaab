"""Qwen3-Omni thinker (`Qwen/Qwen3-Omni-30B-A3B-Instruct`, `-Thinking`, `-Captioner`), audio + text.

Conversion in `weight_conversion/qwen3_omni_moe.py` (Conv2d chunked audio encoder,
mixture-of-experts LM with q/k norm and interleaved multimodal RoPE); prompts through
the checkpoint's `Qwen3OmniMoeProcessor` (`prompts.py`); checked against `transformers`'
`Qwen3OmniMoeThinkerForConditionalGeneration` (`reference.py`). A full checkpoint
(`model_type` "qwen3_omni_moe") is read for its thinker only: its config's
`thinker_config`, and only the shards holding thinker keys (never the talker's, the code
predictor's, code2wav's, nor a vision-only shard).

MoE hook points (`components/moe.py`): `blocks.{l}.mlp.hook_router_logits`,
`hook_topk_ids`, `hook_topk_weights`, `hook_expert_out` (with `set_use_expert_outputs`),
`blocks.{l}.mlp.experts.{e}.hook_pre|hook_pre_linear|hook_post`; the block's
`hook_mlp_out` is the experts' weighted sum.
"""

from __future__ import annotations

from lalm_lens.families.base import Family, read_hf_config
from lalm_lens.families.qwen2_5_omni.prompts import load_omni_processor
from lalm_lens.families.qwen3_omni_moe.prompts import Qwen3OmniPrompts
from lalm_lens.families.qwen3_omni_moe.reference import REFERENCE
from weight_conversion import qwen3_omni_moe as conversion


def read_config(ckpt):
    """The thinker's config, from a full Omni folder or a thinker-only one (an end-of-sequence id at the
    thinker level is copied to the text config, where we read it)."""
    thinker = conversion.thinker_config(read_hf_config(ckpt))
    if getattr(thinker, "eos_token_id", None) is not None:
        thinker.text_config.eos_token_id = thinker.eos_token_id
    return thinker


def prompts(ckpt, config, hf_config):
    processor = load_omni_processor(ckpt.folder, "Qwen3OmniMoeProcessor")
    return Qwen3OmniPrompts(processor, config, hf_config.audio_config.n_window) if processor is not None else None


QWEN3_OMNI_MOE = Family.from_conversion(
    conversion,
    name="qwen3_omni_moe",
    model_types=("qwen3_omni_moe", "qwen3_omni_moe_thinker"),
    prompts=prompts,
    reference=REFERENCE,
    read_config=read_config,
    shard_filter=conversion.is_thinker_key,
)
