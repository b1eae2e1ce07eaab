"""Voxtral (`VoxtralForConditionalGeneration`; Mini-3B-2507, Small-24B-2507) -> HookedLALM.

Whisper-style encoder with no pooling and no padding mask (audio is padded to
a multiple of 30 s and every chunk is encoded whole), positions kept in
float32; projector = 4 consecutive frames concatenated -> Linear -> GELU ->
Linear, no biases (375 tokens per 30 s chunk); Llama LM (GQA, no biases).
"""

from __future__ import annotations

from lalm_lens.config import LALMConfig, ProjectorConfig
from weight_conversion.common import (MODEL_PREFIX_ALIASES, lm_block_config, lm_rules, whisper_encoder_config,
                                      whisper_encoder_rules)
from weight_conversion.keys import KeyMap, Rule, transpose

STACK = 4  # encoder frames per audio token
ABSENT = ("audio_encoder.blocks.*.attn.b_K", "audio_projector.b_*", "blocks.*.attn.b_*", "blocks.*.mlp.b_*", "unembed.b_U")


def key_map(config: LALMConfig) -> KeyMap:
    rules = [
        *whisper_encoder_rules("audio_tower."),
        Rule("multi_modal_projector.linear_1.weight", "audio_projector.W_in", transpose),
        Rule("multi_modal_projector.linear_2.weight", "audio_projector.W_out", transpose),
        *lm_rules("language_model.model.", "language_model.lm_head.", tied=config.lm.tie_word_embeddings),
    ]
    return KeyMap(rules, MODEL_PREFIX_ALIASES)


def convert_config(hf_config) -> LALMConfig:
    """`VoxtralConfig` -> `LALMConfig` (checks the projector width gotcha)."""
    a, t = hf_config.audio_config, hf_config.text_config
    if a.intermediate_size != STACK * a.d_model:
        raise ValueError(
            f"Voxtral's audio_config.intermediate_size ({a.intermediate_size}) is both the encoder FFN width and the "
            f"projector input ({STACK} x d_model = {STACK * a.d_model}); they must agree"
        )
    encoder = whisper_encoder_config(a, kind="whisper", pool=None, final_norm=True)
    encoder.fp32_positions = True
    if hf_config.audio_token_id is None:
        raise ValueError("config.json has no audio_token_id")
    lm = lm_block_config(t)
    lm.tie_word_embeddings = False  # VoxtralForConditionalGeneration keeps its own lm_head whatever the flag says
    return LALMConfig(
        family="voxtral",
        lm=lm,
        encoder=encoder,
        projector=ProjectorConfig(kind="stack", d_in=a.d_model, d_out=t.hidden_size, d_hidden=t.hidden_size,
                                  stack=STACK),
        audio_token_id=int(hf_config.audio_token_id),
        max_audio_seconds=None,
    )
