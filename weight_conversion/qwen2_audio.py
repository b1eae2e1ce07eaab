"""Qwen2-Audio (`Qwen2AudioForConditionalGeneration`) -> HookedLALM.

Config: Whisper-large-v3-like encoder (AvgPool 2, final LayerNorm, padded
frames masked), `Linear(1280 -> 4096)` projector, Qwen2 LM (q/k/v bias, RoPE).
Keys: the hub layout (`audio_tower.*`, `multi_modal_projector.*`,
`language_model.model.*`, `language_model.lm_head.*`) and the transformers >= 5
layout (`model.audio_tower.*`, `model.language_model.*`, `lm_head.*`).
"""

from __future__ import annotations

from lalm_lens.config import LALMConfig, ProjectorConfig
from weight_conversion.common import (MODEL_PREFIX_ALIASES, lm_block_config, lm_rules, whisper_encoder_config,
                                      whisper_encoder_rules)
from weight_conversion.keys import KeyMap, Rule, transpose

# Parameters with no checkpoint counterpart (kept at zero).
ABSENT = ("audio_encoder.blocks.*.attn.b_K", "blocks.*.attn.b_O", "blocks.*.mlp.b_*", "unembed.b_U")


def key_map(config: LALMConfig) -> KeyMap:
    rules = [
        *whisper_encoder_rules("audio_tower."),
        Rule("multi_modal_projector.linear.weight", "audio_projector.W", transpose),
        Rule("multi_modal_projector.linear.bias", "audio_projector.b"),
        *lm_rules("language_model.model.", "language_model.lm_head.", tied=config.lm.tie_word_embeddings),
    ]
    return KeyMap(rules, MODEL_PREFIX_ALIASES)


def convert_config(hf_config) -> LALMConfig:
    """`Qwen2AudioConfig` -> `LALMConfig`."""
    a, t = hf_config.audio_config, hf_config.text_config
    encoder = whisper_encoder_config(a, kind="padded", pool=2, final_norm=True)
    lm = lm_block_config(t)
    lm.tie_word_embeddings = False  # Qwen2AudioForConditionalGeneration keeps its own lm_head whatever the flag
    audio_token_id = getattr(hf_config, "audio_token_id", None) or getattr(hf_config, "audio_token_index")
    return LALMConfig(
        family="qwen2_audio",
        lm=lm,
        encoder=encoder,
        projector=ProjectorConfig(kind="linear", d_in=a.d_model, d_out=t.hidden_size),
        audio_token_id=int(audio_token_id),
        max_audio_seconds=encoder.n_frames / 100,
    )
