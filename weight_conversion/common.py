"""Key rules and config builders shared by families: the Whisper encoder and Llama-style LMs."""

from __future__ import annotations

from weight_conversion.keys import Rule, heads_bias, heads_in, heads_out, transpose
from lalm_lens.config import BlockConfig, EncoderConfig


def whisper_encoder_rules(src: str, dst: str = "audio_encoder.") -> list[Rule]:
    """Hugging Face Whisper-encoder keys under `src` -> our `AudioEncoder` under `dst`."""
    layer, block = src + "layers.{}.", dst + "blocks.{}."
    rules = [
        Rule(src + "conv1.weight", dst + "conv1.weight"),
        Rule(src + "conv1.bias", dst + "conv1.bias"),
        Rule(src + "conv2.weight", dst + "conv2.weight"),
        Rule(src + "conv2.bias", dst + "conv2.bias"),
        Rule(src + "embed_positions.weight", dst + "W_pos"),
        Rule(src + "layer_norm.weight", dst + "ln_post.w"),
        Rule(src + "layer_norm.bias", dst + "ln_post.b"),
        Rule(layer + "self_attn_layer_norm.weight", block + "ln1.w"),
        Rule(layer + "self_attn_layer_norm.bias", block + "ln1.b"),
        Rule(layer + "final_layer_norm.weight", block + "ln2.w"),
        Rule(layer + "final_layer_norm.bias", block + "ln2.b"),
        Rule(layer + "self_attn.out_proj.weight", block + "attn.W_O", heads_out),
        Rule(layer + "self_attn.out_proj.bias", block + "attn.b_O"),
        Rule(layer + "fc1.weight", block + "mlp.W_in", transpose),
        Rule(layer + "fc1.bias", block + "mlp.b_in"),
        Rule(layer + "fc2.weight", block + "mlp.W_out", transpose),
        Rule(layer + "fc2.bias", block + "mlp.b_out"),
    ]
    for x in "qkv":
        rules.append(Rule(layer + f"self_attn.{x}_proj.weight", block + f"attn.W_{x.upper()}", heads_in))
        rules.append(Rule(layer + f"self_attn.{x}_proj.bias", block + f"attn.b_{x.upper()}", heads_bias))
    return rules


def lm_rules(src: str, head: str, tied: bool = False) -> list[Rule]:
    """Llama/Qwen2/Mistral decoder keys under `src` (+ `head` for lm_head) -> our top-level LM.

    With tied embeddings a saved `lm_head.weight` is a copy of the embedding and is dropped.
    """
    layer = src + "layers.{}."
    rules = [
        Rule(src + "embed_tokens.weight", "embed.W_E"),
        Rule(src + "norm.weight", "ln_final.w"),
        Rule(head + "weight", None if tied else "unembed.W_U", transpose),
        Rule(layer + "input_layernorm.weight", "blocks.{}.ln1.w"),
        Rule(layer + "post_attention_layernorm.weight", "blocks.{}.ln2.w"),
        Rule(layer + "self_attn.o_proj.weight", "blocks.{}.attn.W_O", heads_out),
        Rule(layer + "mlp.gate_proj.weight", "blocks.{}.mlp.W_gate", transpose),
        Rule(layer + "mlp.up_proj.weight", "blocks.{}.mlp.W_in", transpose),
        Rule(layer + "mlp.down_proj.weight", "blocks.{}.mlp.W_out", transpose),
        Rule(layer + "self_attn.rotary_emb.inv_freq", None),
    ]
    for x in "qkv":
        rules.append(Rule(layer + f"self_attn.{x}_proj.weight", f"blocks.{{}}.attn.W_{x.upper()}", heads_in))
        rules.append(Rule(layer + f"self_attn.{x}_proj.bias", f"blocks.{{}}.attn.b_{x.upper()}", heads_bias))
    return rules


def whisper_encoder_config(a, *, kind: str, pool, final_norm: bool, positions: str = "learned") -> EncoderConfig:
    """Encoder config from a Whisper-style HF audio config (`d_model`, `encoder_layers`, ...);
    `kind` names the encoder variant (see `EncoderConfig`)."""
    return EncoderConfig(
        d_model=a.d_model,
        d_head=a.d_model // a.encoder_attention_heads,
        n_heads=a.encoder_attention_heads,
        n_layers=a.encoder_layers,
        n_ctx=a.max_source_positions,
        d_mlp=a.encoder_ffn_dim,
        act_fn=getattr(a, "activation_function", "gelu"),
        normalization_type="LN",
        positional_embedding_type=positions,
        eps=1e-5,
        causal=False,
        n_mels=a.num_mel_bins,
        pool=pool,
        final_norm=final_norm,
        n_frames=2 * a.max_source_positions,
        kind=kind,
    )


def lm_block_config(t) -> BlockConfig:
    """LM config from a Llama/Qwen2/Mistral HF text config."""
    rope = dict(getattr(t, "rope_parameters", None) or {})
    theta = rope.get("rope_theta", getattr(t, "rope_theta", 10000.0))
    rope_type = rope.get("rope_type", "default")
    scaling = None
    if rope_type == "llama3":
        scaling = rope
    elif rope_type != "default":
        raise NotImplementedError(f"RoPE type {rope_type!r} is not supported")
    layer_types = getattr(t, "layer_types", None) or []
    sliding = [kind == "sliding_attention" for kind in layer_types]
    if any(sliding) and not all(sliding):
        raise NotImplementedError("mixed sliding-window and full-attention layers are not supported")
    head_dim = getattr(t, "head_dim", None) or t.hidden_size // t.num_attention_heads
    return BlockConfig(
        d_model=t.hidden_size,
        d_head=head_dim,
        n_heads=t.num_attention_heads,
        n_key_value_heads=getattr(t, "num_key_value_heads", None) or t.num_attention_heads,
        n_layers=t.num_hidden_layers,
        n_ctx=t.max_position_embeddings,
        d_mlp=t.intermediate_size,
        d_vocab=t.vocab_size,
        act_fn=t.hidden_act,
        gated_mlp=True,
        normalization_type="RMS",
        positional_embedding_type="rotary",
        eps=t.rms_norm_eps,
        causal=True,
        rotary_base=float(theta),
        rope_scaling=scaling,
        sliding_window=t.sliding_window if any(sliding) else None,
        tie_word_embeddings=bool(getattr(t, "tie_word_embeddings", False)),
    )


# transformers >= 5 saves composite models as `model.<part>.*` + `lm_head.*`; the hub layout has
# `<part>.*` and `language_model.model.*` / `language_model.lm_head.*` (Qwen2-Audio, Voxtral, AF3).
MODEL_PREFIX_ALIASES = {
    "model.audio_tower.": "audio_tower.",
    "model.multi_modal_projector.": "multi_modal_projector.",
    "model.language_model.": "language_model.model.",
    "lm_head.": "language_model.lm_head.",
}
