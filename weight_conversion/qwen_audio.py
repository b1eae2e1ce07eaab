"""Qwen-Audio / Qwen-Audio-Chat (v1, remote code `QWenLMHeadModel`) -> HookedLALM, natively.

Encoder: Whisper-large-v2 shape (80 mels), sinusoidal positions stored in the
checkpoint, the mel cropped to twice the longest clip's conv length (not padded
and masked to 30 s), padded keys masked, AvgPool(2) before `ln_post`, `proj` to
the LM width; learned begin/end vectors written at the `<audio>`/`</audio>` tags.
LM: Qwen-7B v1 — fused `c_attn` (q|k|v, with bias) split into our heads, no other
biases, SwiGLU `c_proj(w1(x) * silu(w2(x)))` (w2 is the gate), RMSNorm, full-width
rotate-half RoPE. logn attention scaling and dynamic NTK change the model only
past `seq_length` (2048) tokens; we refuse longer inputs instead of implementing them.
"""

from __future__ import annotations

from types import SimpleNamespace

from lalm_lens.config import BlockConfig, EncoderConfig, LALMConfig, ProjectorConfig
from weight_conversion.errors import CheckpointError
from weight_conversion.keys import KeyMap, Rule, heads_bias, heads_in, heads_out, split, transpose

ABSENT = ("audio_encoder.blocks.*.attn.b_K", "blocks.*.attn.b_O", "blocks.*.mlp.b_*", "unembed.b_U")
# The audio pad token `[[[AUDIO:modality]]]` is the first of the tokenizer's audio specials, which end
# with `<audio>`, `</audio>`: 3314 specials, so the pad id is `audio_start_id - 3312`.
AUDIO_PAD_BEFORE_START = 3312


def config_from_dict(config: dict, where: str = "config.json") -> SimpleNamespace:
    """The remote-code `QWenConfig` fields, read without running remote code."""
    if "audio" not in config:
        raise CheckpointError(f"{where} is a Qwen (v1) text model without an audio encoder, not Qwen-Audio")
    return SimpleNamespace(**config)


def convert_config(c) -> LALMConfig:
    if getattr(c, "rotary_pct", 1.0) != 1.0:
        raise NotImplementedError("Qwen v1 with partial rotary embeddings is not supported")
    a = c.audio
    heads = c.num_attention_heads
    lm = BlockConfig(
        d_model=c.hidden_size, d_head=getattr(c, "kv_channels", c.hidden_size // heads), n_heads=heads,
        n_layers=c.num_hidden_layers, n_ctx=c.seq_length, d_mlp=c.intermediate_size // 2, d_vocab=c.vocab_size,
        act_fn="silu", gated_mlp=True, normalization_type="RMS", positional_embedding_type="rotary",
        eps=c.layer_norm_epsilon, rotary_base=float(c.rotary_emb_base), causal=True,
        tie_word_embeddings=bool(getattr(c, "tie_word_embeddings", False)),
    )
    encoder = EncoderConfig(
        kind="qwen_audio", d_model=a["n_state"], d_head=a["n_state"] // a["n_head"], n_heads=a["n_head"], n_layers=a["n_layer"],
        n_ctx=a["n_ctx"], d_mlp=4 * a["n_state"], act_fn="gelu", normalization_type="LN",
        positional_embedding_type="sinusoidal", eps=1e-5, causal=False, n_mels=a["n_mels"],
        pool=2 if a.get("avg_pool", True) else None, final_norm=True, n_frames=2 * a["n_ctx"],
    )
    start = a["audio_start_id"]
    if not a.get("add_audio_bos_eos_token", True):
        raise NotImplementedError("Qwen-Audio without audio begin/end vectors is not supported")
    return LALMConfig(
        family="qwen_audio", lm=lm, encoder=encoder,
        projector=ProjectorConfig(kind="tagged", d_in=a["n_state"], d_out=a["output_dim"]),
        audio_token_id=start - AUDIO_PAD_BEFORE_START,
        max_audio_seconds=30.0,
        extra={"audio_span_ids": (start, start + 1)},
    )


def key_map(config: LALMConfig) -> KeyMap:
    h, b = "transformer.h.{}.", "blocks.{}."
    e, eb = "transformer.audio.", "audio_encoder.blocks.{}."
    rules = [
        Rule("transformer.wte.weight", "embed.W_E"),
        Rule("transformer.ln_f.weight", "ln_final.w"),
        Rule("lm_head.weight", None if config.lm.tie_word_embeddings else "unembed.W_U", transpose),
        Rule(h + "ln_1.weight", b + "ln1.w"),
        Rule(h + "ln_2.weight", b + "ln2.w"),
        Rule(h + "attn.c_attn.weight", (b + "attn.W_Q", b + "attn.W_K", b + "attn.W_V"), split(3, heads_in)),
        Rule(h + "attn.c_attn.bias", (b + "attn.b_Q", b + "attn.b_K", b + "attn.b_V"), split(3, heads_bias)),
        Rule(h + "attn.c_proj.weight", b + "attn.W_O", heads_out),
        Rule(h + "mlp.w1.weight", b + "mlp.W_in", transpose),
        Rule(h + "mlp.w2.weight", b + "mlp.W_gate", transpose),
        Rule(h + "mlp.c_proj.weight", b + "mlp.W_out", transpose),
        Rule(h + "attn.rotary_emb.inv_freq", None),
        Rule("transformer.rotary_emb.inv_freq", None),
        Rule(e + "positional_embedding", "audio_encoder.W_pos"),
        Rule(e + "ln_post.weight", "audio_encoder.ln_post.w"),
        Rule(e + "ln_post.bias", "audio_encoder.ln_post.b"),
        Rule(e + "proj.weight", "audio_projector.W", transpose),
        Rule(e + "proj.bias", "audio_projector.b"),
        Rule(e + "audio_bos_eos_token.weight", "audio_projector.W_tags"),
        Rule(e + "blocks.{}.attn.out.weight", eb + "attn.W_O", heads_out),
        Rule(e + "blocks.{}.attn.out.bias", eb + "attn.b_O"),
        Rule(e + "blocks.{}.attn_ln.weight", eb + "ln1.w"),
        Rule(e + "blocks.{}.attn_ln.bias", eb + "ln1.b"),
        Rule(e + "blocks.{}.mlp_ln.weight", eb + "ln2.w"),
        Rule(e + "blocks.{}.mlp_ln.bias", eb + "ln2.b"),
        Rule(e + "blocks.{}.mlp.0.weight", eb + "mlp.W_in", transpose),
        Rule(e + "blocks.{}.mlp.0.bias", eb + "mlp.b_in"),
        Rule(e + "blocks.{}.mlp.2.weight", eb + "mlp.W_out", transpose),
        Rule(e + "blocks.{}.mlp.2.bias", eb + "mlp.b_out"),
    ]
    for conv in ("conv1", "conv2"):
        rules += [Rule(e + f"{conv}.weight", f"audio_encoder.{conv}.weight"),
                  Rule(e + f"{conv}.bias", f"audio_encoder.{conv}.bias")]
    for theirs, ours in (("query", "Q"), ("key", "K"), ("value", "V")):
        rules.append(Rule(e + f"blocks.{{}}.attn.{theirs}.weight", eb + f"attn.W_{ours}", heads_in))
        if theirs != "key":
            rules.append(Rule(e + f"blocks.{{}}.attn.{theirs}.bias", eb + f"attn.b_{ours}", heads_bias))
    return KeyMap(rules)
