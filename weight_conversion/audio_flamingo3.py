"""Audio Flamingo 3 (`AudioFlamingo3ForConditionalGeneration`; `nvidia/audio-flamingo-3-hf`) -> HookedLALM.

Config: Whisper-large-v3-like encoder (padded frames masked as keys, AvgPool 2,
then the final LayerNorm), projector `Linear -> GELU -> Linear` with biases,
Qwen2 LM (q/k/v bias, RoPE) with its own (never tied) lm_head. Audio longer than
30 s comes as several 30 s windows (rows of `input_features`), at most 20 (600 s).
Keys: the hub layout (`audio_tower.*`, `multi_modal_projector.linear_{1,2}.*`,
`language_model.model.*`, `language_model.lm_head.*`, which `save_pretrained`
still writes) and the transformers >= 5 in-memory layout (`model.audio_tower.*`,
`model.language_model.*`, `lm_head.*`).
"""

from __future__ import annotations

from lalm_lens.config import LALMConfig, ProjectorConfig
from weight_conversion.common import (MODEL_PREFIX_ALIASES, lm_block_config, lm_rules, whisper_encoder_config,
                                      whisper_encoder_rules)
from weight_conversion.keys import KeyMap, Rule, transpose

MAX_AUDIO_SECONDS = 600  # AudioFlamingo3Processor(max_audio_len=600): 20 windows of 30 s, the rest cut
# Parameters with no checkpoint counterpart (kept at zero): Whisper's k_proj and Qwen2's o_proj/MLP have no bias.
ABSENT = ("audio_encoder.blocks.*.attn.b_K", "blocks.*.attn.b_O", "blocks.*.mlp.b_*", "unembed.b_U")


def key_map(config: LALMConfig) -> KeyMap:
    rules = [
        *whisper_encoder_rules("audio_tower."),
        Rule("multi_modal_projector.linear_1.weight", "audio_projector.W_in", transpose),
        Rule("multi_modal_projector.linear_1.bias", "audio_projector.b_in"),
        Rule("multi_modal_projector.linear_2.weight", "audio_projector.W_out", transpose),
        Rule("multi_modal_projector.linear_2.bias", "audio_projector.b_out"),
        *lm_rules("language_model.model.", "language_model.lm_head.", tied=config.lm.tie_word_embeddings),
    ]
    return KeyMap(rules, MODEL_PREFIX_ALIASES)


def convert_config(hf_config) -> LALMConfig:
    """`AudioFlamingo3Config` -> `LALMConfig` (refusing projector settings the released model does not use)."""
    a, t = hf_config.audio_config, hf_config.text_config
    if not getattr(hf_config, "projector_bias", True):
        raise NotImplementedError("Audio Flamingo 3 checkpoints with projector_bias=False are not supported")
    act = getattr(hf_config, "projector_hidden_act", "gelu")
    if act != "gelu":
        raise NotImplementedError(f"projector_hidden_act {act!r} is not supported (Audio Flamingo 3 uses 'gelu')")
    if getattr(hf_config, "audio_token_id", None) is None:
        raise ValueError("config.json has no audio_token_id")
    # The encoder config's canonical names (hidden_size, num_hidden_layers, ...) answer to Whisper's
    # d_model / encoder_layers / ... through its attribute_map.
    encoder = whisper_encoder_config(a, kind="padded", pool=2, final_norm=True)
    lm = lm_block_config(t)
    lm.tie_word_embeddings = False  # AudioFlamingo3ForConditionalGeneration never ties its lm_head
    return LALMConfig(
        family="audio_flamingo3",
        lm=lm,
        encoder=encoder,
        projector=ProjectorConfig(kind="mlp", d_in=a.d_model, d_out=t.hidden_size, d_hidden=t.hidden_size),
        audio_token_id=int(hf_config.audio_token_id),
        max_audio_seconds=MAX_AUDIO_SECONDS,
    )
