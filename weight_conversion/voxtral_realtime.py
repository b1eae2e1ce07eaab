"""Voxtral Realtime (`VoxtralRealtimeForConditionalGeneration`; Voxtral-Mini-4B-Realtime-2602) -> HookedLALM.

Streaming encoder: causal convolutions, RMSNorm blocks with rotary positions,
sliding-window causal attention (q/v/o biases, no k bias), gated SiLU MLP with a
down-projection bias, final RMSNorm. Projector: 4 consecutive frames
concatenated -> Linear -> GELU -> Linear, no biases (one audio vector per 80 ms).
LM: Mistral (sliding window on every layer) whose post-attention norm is
scaled by `1 + MLP(time embedding)` (`ada_rms_norm`, 32 wide, no biases);
embeddings tied to the head.
"""

from __future__ import annotations

from lalm_lens.config import EncoderConfig, LALMConfig, ProjectorConfig
from weight_conversion.common import MODEL_PREFIX_ALIASES, lm_block_config, lm_rules
from weight_conversion.keys import KeyMap, Rule, heads_bias, heads_in, heads_out, transpose

ADA_WIDTH = 32  # `VoxtralRealtimeTextAdaRmsNorm`: hidden -> 32 -> hidden
TIME_THETA = 10000.0  # `VoxtralRealtimeTimeEmbedding`'s default theta
ABSENT = ("audio_encoder.blocks.*.attn.b_K", "audio_encoder.blocks.*.mlp.b_gate", "audio_encoder.blocks.*.mlp.b_in",
          "audio_projector.b_*", "blocks.*.attn.b_*", "blocks.*.mlp.b_*", "unembed.b_U")


def encoder_rules(src: str = "audio_tower.", dst: str = "audio_encoder.") -> list[Rule]:
    layer, block = src + "layers.{}.", dst + "blocks.{}."
    rules = [
        Rule(src + "embedder.conv1.weight", dst + "conv1.weight"),
        Rule(src + "embedder.conv1.bias", dst + "conv1.bias"),
        Rule(src + "embedder.conv2.weight", dst + "conv2.weight"),
        Rule(src + "embedder.conv2.bias", dst + "conv2.bias"),
        Rule(src + "norm.weight", dst + "ln_post.w"),
        Rule(layer + "self_attn_layer_norm.weight", block + "ln1.w"),
        Rule(layer + "final_layer_norm.weight", block + "ln2.w"),
        Rule(layer + "self_attn.o_proj.weight", block + "attn.W_O", heads_out),
        Rule(layer + "self_attn.o_proj.bias", block + "attn.b_O"),
        Rule(layer + "mlp.gate_proj.weight", block + "mlp.W_gate", transpose),
        Rule(layer + "mlp.up_proj.weight", block + "mlp.W_in", transpose),
        Rule(layer + "mlp.down_proj.weight", block + "mlp.W_out", transpose),
        Rule(layer + "mlp.down_proj.bias", block + "mlp.b_out"),
        Rule(src + "rotary_emb.inv_freq", None),
    ]
    for x in "qkv":
        rules.append(Rule(layer + f"self_attn.{x}_proj.weight", block + f"attn.W_{x.upper()}", heads_in))
    for x in "qv":
        rules.append(Rule(layer + f"self_attn.{x}_proj.bias", block + f"attn.b_{x.upper()}", heads_bias))
    return rules


def key_map(config: LALMConfig) -> KeyMap:
    src = "language_model.model."
    rules = [
        *encoder_rules(),
        Rule("multi_modal_projector.linear_1.weight", "audio_projector.W_in", transpose),
        Rule("multi_modal_projector.linear_2.weight", "audio_projector.W_out", transpose),
        *lm_rules(src, "language_model.lm_head.", tied=config.lm.tie_word_embeddings),
        Rule(src + "layers.{}.ada_rms_norm.linear1.weight", "blocks.{}.ln2.W_ada_in", transpose),
        Rule(src + "layers.{}.ada_rms_norm.linear2.weight", "blocks.{}.ln2.W_ada_out", transpose),
        Rule(src + "rotary_emb.inv_freq", None),
        Rule("time_embedding.inv_freq", None),
    ]
    return KeyMap(rules, {**MODEL_PREFIX_ALIASES, "model.time_embedding.": "time_embedding."})


def encoder_config(a) -> EncoderConfig:
    """`VoxtralRealtimeEncoderConfig` -> the streaming encoder's config."""
    rope = dict(a.rope_parameters or {})
    if rope.get("rope_type", "default") != "default":
        raise NotImplementedError(f"encoder RoPE type {rope['rope_type']!r} is not supported")
    return EncoderConfig(
        d_model=a.hidden_size, d_head=a.head_dim, n_heads=a.num_attention_heads, n_layers=a.num_hidden_layers,
        n_ctx=a.max_position_embeddings, d_mlp=a.intermediate_size, act_fn=a.hidden_act, gated_mlp=True,
        normalization_type="RMS", positional_embedding_type="rotary", eps=a.rms_norm_eps, causal=True,
        rotary_base=float(rope.get("rope_theta", 10000.0)), sliding_window=a.sliding_window, n_mels=a.num_mel_bins,
        pool=None, final_norm=True, n_frames=None, kind="streaming",
    )


def convert_config(hf_config) -> LALMConfig:
    """`VoxtralRealtimeConfig` -> `LALMConfig` (every decoder layer slides over `sliding_window` positions)."""
    a, t = hf_config.audio_config, hf_config.text_config
    lm = lm_block_config(t)
    lm.sliding_window = t.sliding_window  # Mistral: one window for every layer (no layer_types)
    lm.tie_word_embeddings = bool(hf_config.tie_word_embeddings)
    stack = hf_config.downsample_factor
    if hf_config.projector_hidden_act != "gelu":
        raise NotImplementedError(f"projector_hidden_act {hf_config.projector_hidden_act!r} is not supported (gelu)")
    return LALMConfig(
        family="voxtral_realtime",
        lm=lm,
        encoder=encoder_config(a),
        projector=ProjectorConfig(kind="stack", d_in=a.hidden_size, d_out=t.hidden_size, d_hidden=t.hidden_size,
                                  stack=stack),
        audio_token_id=-1,  # no placeholder: every position gets the audio vector of its time step
        max_audio_seconds=None,
        extra=dict(ada_width=ADA_WIDTH, time_theta=TIME_THETA, default_delay=int(hf_config.default_num_delay_tokens),
                   frames_per_token=int(hf_config.audio_length_per_tok)),
    )
