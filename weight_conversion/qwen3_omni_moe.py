"""Qwen3-Omni thinker (`Qwen3OmniMoeThinkerForConditionalGeneration`, audio + text) -> HookedLALM.

Config: a chunked audio encoder with a Conv2d stem (`Conv2dChunkedAudioEncoder`:
1 s chunks, 8 s attention windows, k_proj with bias, `ln_post`, `proj1` GELU `proj2`),
no separate projector, and a Qwen3-MoE LM: q/k RMSNorm per head, no attention bias,
interleaved multimodal RoPE (`mrope_section`), and mixture-of-experts MLPs (router
`mlp.gate`, `num_experts` experts of width `moe_intermediate_size`, `num_experts_per_tok`
per token, `norm_topk_prob`) in every layer that `mlp_only_layers` and
`decoder_sparse_step` leave sparse; the others are dense gated MLPs. The vision tower,
the talker (with its code predictor) and code2wav are not converted.

Keys, three layouts mapped onto one (the thinker-only one):
- the released full model (`Qwen/Qwen3-Omni-30B-A3B-Instruct`): `thinker.audio_tower.*`,
  `thinker.visual.*`, `thinker.model.*`, `thinker.lm_head.*`, `talker.*`, `code2wav.*`,
  experts one by one (`mlp.experts.{e}.gate_proj|up_proj|down_proj.weight`);
- a thinker saved alone (`save_pretrained`): the same without `thinker.`;
- transformers >= 5 in memory: `model.audio_tower.*`, `model.language_model.*`, `lm_head.*`, the
  experts fused (`mlp.experts.gate_up_proj [E, 2 * d_expert, d_model]`, `mlp.experts.down_proj`).
"""

from __future__ import annotations

from lalm_lens.config import LALMConfig, ProjectorConfig
from weight_conversion.common import lm_block_config, lm_rules, whisper_encoder_config, whisper_encoder_rules
from weight_conversion.keys import KeyMap, Rule, transpose

# Parameters with no checkpoint counterpart (kept at zero): the LM has no attention or MLP biases.
ABSENT = ("blocks.*.attn.b_*", "blocks.*.mlp.b_*", "unembed.b_U")

# Checkpoint prefixes that are not the thinker's audio + text path (after the aliases below).
NOT_CONVERTED = ("visual.", "talker.", "code2wav.")

PREFIX_ALIASES = {
    "thinker.audio_tower.": "audio_tower.",
    "thinker.visual.": "visual.",
    "thinker.model.audio_tower.": "audio_tower.",
    "thinker.model.visual.": "visual.",
    "thinker.model.language_model.": "model.",
    "thinker.model.": "model.",
    "thinker.lm_head.": "lm_head.",
    "model.audio_tower.": "audio_tower.",
    "model.visual.": "visual.",
    "model.language_model.": "model.",
}
_LAYOUTS = KeyMap([], PREFIX_ALIASES)


def is_thinker_key(key: str) -> bool:
    """Whether a checkpoint key is one we convert (shards holding none, e.g. the talker's, are never read)."""
    return not _LAYOUTS.canonical(key).startswith(NOT_CONVERTED)


def _fused_gate_up(w, targets):
    """`[E, 2 * d_expert, d_model]` (gate rows, then up rows) -> each expert's `W_gate`, `W_in`."""
    d_expert = w.shape[1] // 2
    return tuple(part.T for e in range(w.shape[0]) for part in (w[e, :d_expert], w[e, d_expert:]))


def _fused_down(w, targets):
    """`[E, d_model, d_expert]` -> each expert's `W_out` `[d_expert, d_model]`."""
    return tuple(w[e].T for e in range(w.shape[0]))


def expert_rules(src: str, n_experts: int) -> list[Rule]:
    """Router and experts of the MoE layers, one by one (released) or fused (in memory)."""
    layer, mlp = src + "layers.{}.mlp.", "blocks.{}.mlp."
    gate_up = tuple(f"{mlp}experts.{e}.{w}" for e in range(n_experts) for w in ("W_gate", "W_in"))
    down = tuple(f"{mlp}experts.{e}.W_out" for e in range(n_experts))
    return [
        Rule(layer + "gate.weight", mlp + "W_router", transpose),
        Rule(layer + "experts.{}.gate_proj.weight", mlp + "experts.{}.W_gate", transpose),
        Rule(layer + "experts.{}.up_proj.weight", mlp + "experts.{}.W_in", transpose),
        Rule(layer + "experts.{}.down_proj.weight", mlp + "experts.{}.W_out", transpose),
        Rule(layer + "experts.gate_up_proj", gate_up, _fused_gate_up),
        Rule(layer + "experts.down_proj", down, _fused_down),
    ]


def key_map(config: LALMConfig) -> KeyMap:
    src, dst = "audio_tower.", "audio_encoder."
    rules = [
        *whisper_encoder_rules(src, dst),
        *(Rule(f"{src}conv2d{i}.{p}", f"{dst}conv2d{i}.{p}") for i in (1, 2, 3) for p in ("weight", "bias")),
        Rule(src + "conv_out.weight", dst + "W_conv_out", transpose),
        Rule(src + "ln_post.weight", dst + "ln_post.w"),
        Rule(src + "ln_post.bias", dst + "ln_post.b"),
        *(Rule(f"{src}proj{i}.weight", f"{dst}W_proj{i}", transpose) for i in (1, 2)),
        *(Rule(f"{src}proj{i}.bias", f"{dst}b_proj{i}") for i in (1, 2)),
        Rule(src + "positional_embedding.positional_embedding", None),  # computed, not saved in practice
        *lm_rules("model.", "lm_head.", tied=config.lm.tie_word_embeddings),
        Rule("model.layers.{}.self_attn.q_norm.weight", "blocks.{}.attn.q_norm.w"),
        Rule("model.layers.{}.self_attn.k_norm.weight", "blocks.{}.attn.k_norm.w"),
        *expert_rules("model.", config.lm.n_experts or 0),
    ]
    return KeyMap(rules, PREFIX_ALIASES, drop_prefixes=NOT_CONVERTED)


def thinker_config(hf_config):
    """The thinker's config from a full `Qwen3OmniMoeConfig` (or the thinker config itself)."""
    return getattr(hf_config, "thinker_config", None) or hf_config


def moe_layers(t) -> list[int]:
    """The sparse layers, as `Qwen3OmniMoeThinkerTextDecoderLayer` decides them."""
    step, dense = t.decoder_sparse_step, set(t.mlp_only_layers or ())
    return [l for l in range(t.num_hidden_layers) if l not in dense and t.num_experts > 0 and (l + 1) % step == 0]


def convert_config(hf_config) -> LALMConfig:
    """`Qwen3OmniMoeThinkerConfig` (or a full `Qwen3OmniMoeConfig`) -> `LALMConfig`."""
    hf_config = thinker_config(hf_config)
    a, t = hf_config.audio_config, hf_config.text_config
    if a.output_dim != t.hidden_size:
        raise ValueError(f"the audio encoder's output_dim ({a.output_dim}) must equal the LM width ({t.hidden_size})")
    encoder = whisper_encoder_config(a, kind="chunked_conv2d", pool=None, final_norm=True, positions="sinusoidal")
    encoder.window_frames = 2 * a.n_window
    encoder.attention_window_frames = a.n_window_infer
    encoder.conv_channels = a.downsample_hidden_size
    encoder.d_out = a.output_dim
    encoder.n_frames = None  # any number of frames: positions restart in every chunk
    lm = lm_block_config(t)
    rope = dict(getattr(t, "rope_parameters", None) or {})
    lm.mrope_section = list(rope.get("mrope_section") or [24, 20, 20])  # transformers' default when absent
    lm.mrope_interleaved = True  # the original always interleaves (`recomposition_frequencies`)
    lm.qk_norm = True
    lm.n_experts, lm.experts_per_token = t.num_experts, t.num_experts_per_tok
    lm.d_expert, lm.norm_topk_prob = t.moe_intermediate_size, bool(t.norm_topk_prob)
    lm.moe_layers = moe_layers(t)
    lm.tie_word_embeddings = bool(getattr(hf_config, "tie_word_embeddings", False))  # the thinker's flag decides
    return LALMConfig(
        family="qwen3_omni_moe",
        lm=lm,
        encoder=encoder,
        projector=ProjectorConfig(kind="identity", d_in=a.output_dim, d_out=t.hidden_size),
        audio_token_id=int(hf_config.audio_token_id),
        max_audio_seconds=None,  # the released processor pads to the longest clip and never truncates
        pad_token_id=getattr(hf_config, "pad_token_id", None),
    )
