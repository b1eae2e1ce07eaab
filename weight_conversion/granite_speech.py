"""Granite Speech (`GraniteSpeechForConditionalGeneration`; ibm-granite/granite-speech-3.3-2b, -8b) -> HookedLALM.

Config: a CTC conformer encoder (`ConformerConfig`), a BLIP-2 Q-Former over windows of
`window_size` frames with `window_size // downsample_rate` queries each, and a Granite LM
(Llama blocks with embedding / residual / attention multipliers and logits scaling), plus
the LoRA adapter of `adapter_config.json` (rank, alpha, targets among q/k/v_proj), kept as
its own parameters (`blocks.{l}.attn.lora_{q,k,v}.A/B`) and read from
`adapter_model.safetensors` by a second key table.
Keys: the hub layout (`encoder.*`, `projector.*`, `language_model.model.*`) and the
transformers >= 5 in-memory layout (`model.encoder.*`, `model.projector.*`,
`model.language_model.*`, `lm_head.*`); adapter keys under `base_model.model.` in either.
"""

from __future__ import annotations

import json
import warnings
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional

from lalm_lens.config import ConformerConfig, GraniteLMConfig, LALMConfig, ProjectorConfig
from weight_conversion.common import lm_block_config, lm_rules
from weight_conversion.keys import KeyMap, Rule, heads_bias, heads_in, heads_out, split, transpose

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
# Granite's LM has no biases (attention_bias / mlp_bias False) and a tied head; the Q-Former has all its biases.
ABSENT = ("blocks.*.attn.b_*", "blocks.*.mlp.b_*", "unembed.b_U")
ALIASES = {"model.encoder.": "encoder.", "model.projector.": "projector.",
           "model.language_model.": "language_model.model.", "lm_head.": "language_model.lm_head."}
LORA_TARGETS = {"q_proj": "q", "k_proj": "k", "v_proj": "v"}


@dataclass
class GraniteSpeechSource:
    """The checkpoint's `GraniteSpeechConfig` and its `adapter_config.json` (None without one)."""

    config: object
    adapter: Optional[dict] = None

    @property
    def text_config(self):
        return self.config.text_config

    @property
    def dtype(self):
        return getattr(self.config, "dtype", None)


def read_source(folder: Path, hf_config) -> GraniteSpeechSource:
    path = Path(folder) / ADAPTER_CONFIG
    return GraniteSpeechSource(hf_config, json.loads(path.read_text()) if path.is_file() else None)


def conv_pointwise(w, target):
    """Conv1d kernel-1 weight `[out, in, 1]` -> `[in, out]`."""
    return w[..., 0].T


def conv_depthwise(w, target):
    """Depthwise Conv1d weight `[channels, 1, kernel]` -> `[channels, kernel]`."""
    return w[:, 0]


def encoder_rules(src: str = "encoder.", dst: str = "audio_encoder.") -> list[Rule]:
    layer, block = src + "layers.{}.", dst + "blocks.{}."
    rules = [
        Rule(src + "input_linear.weight", dst + "W_in", transpose), Rule(src + "input_linear.bias", dst + "b_in"),
        Rule(src + "out.weight", dst + "W_ctc", transpose), Rule(src + "out.bias", dst + "b_ctc"),
        Rule(src + "out_mid.weight", dst + "W_ctc_back", transpose), Rule(src + "out_mid.bias", dst + "b_ctc_back"),
        Rule(layer + "attn.to_q.weight", block + "attn.W_Q", heads_in),
        Rule(layer + "attn.to_kv.weight", (block + "attn.W_K", block + "attn.W_V"), split(2, heads_in)),
        Rule(layer + "attn.to_out.weight", block + "attn.W_O", heads_out),
        Rule(layer + "attn.to_out.bias", block + "attn.b_O"),
        Rule(layer + "attn.rel_pos_emb.weight", block + "attn.W_rel"),
        Rule(layer + "conv.up_conv.weight", block + "conv.W_in", conv_pointwise),
        Rule(layer + "conv.up_conv.bias", block + "conv.b_in"),
        Rule(layer + "conv.depth_conv.conv.weight", block + "conv.W_depthwise", conv_depthwise),
        Rule(layer + "conv.batch_norm.weight", block + "conv.bn_w"),
        Rule(layer + "conv.batch_norm.bias", block + "conv.bn_b"),
        Rule(layer + "conv.batch_norm.running_mean", block + "conv.bn_mean"),
        Rule(layer + "conv.batch_norm.running_var", block + "conv.bn_var"),
        Rule(layer + "conv.batch_norm.num_batches_tracked", None),
        Rule(layer + "conv.down_conv.weight", block + "conv.W_out", conv_pointwise),
        Rule(layer + "conv.down_conv.bias", block + "conv.b_out"),
    ]
    norms = {"attn.pre_norm": "attn.ln", "conv.norm": "conv.ln", "post_norm": "ln_post",
             "ff1.pre_norm": "ff1.ln", "ff2.pre_norm": "ff2.ln"}
    for theirs, ours in norms.items():
        rules += [Rule(layer + theirs + ".weight", block + ours + ".w"), Rule(layer + theirs + ".bias", block + ours + ".b")]
    for ff in ("ff1", "ff2"):
        rules += [Rule(layer + f"{ff}.up_proj.weight", block + f"{ff}.W_in", transpose),
                  Rule(layer + f"{ff}.up_proj.bias", block + f"{ff}.b_in"),
                  Rule(layer + f"{ff}.down_proj.weight", block + f"{ff}.W_out", transpose),
                  Rule(layer + f"{ff}.down_proj.bias", block + f"{ff}.b_out")]
    return rules


def projector_rules(src: str = "projector.", dst: str = "audio_projector.") -> list[Rule]:
    layer, ours = src + "qformer.encoder.layer.{}.", dst + "layers.{}."
    rules = [
        Rule(src + "query", dst + "W_query"),
        Rule(src + "qformer.layernorm.weight", dst + "ln_query.w"), Rule(src + "qformer.layernorm.bias", dst + "ln_query.b"),
        Rule(src + "linear.weight", dst + "W", transpose), Rule(src + "linear.bias", dst + "b"),
        Rule(layer + "intermediate_query.dense.weight", ours + "mlp.W_in", transpose),
        Rule(layer + "intermediate_query.dense.bias", ours + "mlp.b_in"),
        Rule(layer + "output_query.dense.weight", ours + "mlp.W_out", transpose),
        Rule(layer + "output_query.dense.bias", ours + "mlp.b_out"),
        Rule(layer + "output_query.LayerNorm.weight", ours + "ln3.w"), Rule(layer + "output_query.LayerNorm.bias", ours + "ln3.b"),
    ]
    for part in ("intermediate.dense", "output.dense", "output.LayerNorm"):  # the text-input FFN: unused by queries
        rules += [Rule(layer + part + ".weight", None), Rule(layer + part + ".bias", None)]
    for theirs, attn, ln in (("attention", "attn", "ln1"), ("crossattention", "cross_attn", "ln2")):
        for x, name in (("query", "Q"), ("key", "K"), ("value", "V")):
            rules.append(Rule(layer + f"{theirs}.attention.{x}.weight", ours + f"{attn}.W_{name}", heads_in))
            rules.append(Rule(layer + f"{theirs}.attention.{x}.bias", ours + f"{attn}.b_{name}", heads_bias))
        rules += [Rule(layer + f"{theirs}.output.dense.weight", ours + f"{attn}.W_O", heads_out),
                  Rule(layer + f"{theirs}.output.dense.bias", ours + f"{attn}.b_O"),
                  Rule(layer + f"{theirs}.output.LayerNorm.weight", ours + f"{ln}.w"),
                  Rule(layer + f"{theirs}.output.LayerNorm.bias", ours + f"{ln}.b")]
    return rules


def key_map(config: LALMConfig) -> KeyMap:
    rules = [*encoder_rules(), *projector_rules(),
             *lm_rules("language_model.model.", "language_model.lm_head.", tied=config.lm.tie_word_embeddings)]
    return KeyMap(rules, ALIASES)


def adapter_key_map(config: LALMConfig) -> KeyMap:
    """`adapter_model.safetensors` keys (peft: `base_model.model.<module>.lora_{A,B}[.<name>].weight`)."""
    layer = "language_model.model.layers.{}.self_attn."
    rules = []
    for proj, which in LORA_TARGETS.items():
        for part in ("A", "B"):
            ours = f"blocks.{{}}.attn.lora_{which}.{part}"
            rules += [Rule(layer + f"{proj}.lora_{part}.weight", ours, transpose),
                      Rule(layer + f"{proj}.lora_{part}.default.weight", ours, transpose)]
    aliases = {"base_model.model." + k: v for k, v in ALIASES.items()}
    aliases["base_model.model.language_model.model."] = "language_model.model."
    return KeyMap(rules, aliases)


def lora_config(adapter: Optional[dict]) -> Optional[dict]:
    """`adapter_config.json` -> dict(rank, scale, targets), refusing LoRA variants the model does not implement."""
    if adapter is None:
        return None
    if adapter.get("peft_type", "LORA") != "LORA":
        raise NotImplementedError(f"adapter type {adapter.get('peft_type')!r} is not supported (LoRA only)")
    for key in ("use_dora", "fan_in_fan_out", "layers_to_transform", "rank_pattern", "alpha_pattern", "modules_to_save"):
        if adapter.get(key):
            raise NotImplementedError(f"adapter_config.json sets {key}={adapter[key]!r}, which is not supported")
    if adapter.get("bias", "none") != "none" or adapter.get("lora_bias"):
        raise NotImplementedError("LoRA adapters with biases are not supported")
    targets = adapter.get("target_modules") or []
    targets = [targets] if isinstance(targets, str) else list(targets)
    unknown = sorted(set(targets) - set(LORA_TARGETS))
    if unknown or not targets:
        raise NotImplementedError(f"LoRA on {unknown or 'no modules'} is not supported (q_proj, k_proj, v_proj only)")
    rank, alpha = int(adapter["r"]), float(adapter["lora_alpha"])
    scale = alpha / rank**0.5 if adapter.get("use_rslora") else alpha / rank
    return dict(rank=rank, scale=scale, targets=sorted(LORA_TARGETS[t] for t in targets))


def granite_lm_config(t, lora: Optional[dict], tied: bool) -> GraniteLMConfig:
    base = lm_block_config(t)
    values = {f.name: getattr(base, f.name) for f in fields(base) if f.init}
    values["tie_word_embeddings"] = tied
    return GraniteLMConfig(**values, embedding_multiplier=float(t.embedding_multiplier),
                           residual_multiplier=float(t.residual_multiplier),
                           attention_multiplier=float(t.attention_multiplier), logits_scaling=float(t.logits_scaling),
                           lora=lora)


def convert_config(source) -> LALMConfig:
    """`GraniteSpeechSource` (or a bare `GraniteSpeechConfig`: no adapter) -> `LALMConfig`."""
    hf, adapter = (source.config, source.adapter) if isinstance(source, GraniteSpeechSource) else (source, None)
    e, p, t = hf.encoder_config, hf.projector_config, hf.text_config
    if getattr(hf, "has_lora_adapter", False) and adapter is None:
        warnings.warn("config.json says the model has a LoRA adapter but the folder holds no adapter_config.json: "
                      "the model runs without it (its audio answers will differ from the released model's)")
    if getattr(p, "cross_attention_frequency", 1) != 1:
        raise NotImplementedError("Q-Former projectors with cross-attention in only some layers are not supported")
    if not p.encoder_hidden_size == p.hidden_size == e.hidden_dim:
        raise NotImplementedError(f"the Q-Former width ({p.hidden_size}), its encoder width ({p.encoder_hidden_size}) "
                                  f"and the conformer's ({e.hidden_dim}) must be equal")
    if p.hidden_act != "gelu" or getattr(t, "mlp_bias", False):
        raise NotImplementedError("only the released Q-Former activation (gelu) and bias-free Granite MLPs are supported")
    if hf.window_size % hf.downsample_rate:
        raise ValueError(f"window_size {hf.window_size} is not a multiple of downsample_rate {hf.downsample_rate}")
    encoder = ConformerConfig(
        d_model=e.hidden_dim, d_head=e.dim_head, n_heads=e.num_heads, n_layers=e.num_layers, n_ctx=e.context_size,
        d_mlp=e.hidden_dim * e.feedforward_mult, act_fn="silu", normalization_type="LN",
        positional_embedding_type="relative", eps=1e-5, causal=False, n_mels=e.input_dim, pool=None,
        final_norm=False, n_frames=None, kind="conformer", context_size=e.context_size, max_pos_emb=e.max_pos_emb,
        conv_kernel=e.conv_kernel_size, d_conv=e.hidden_dim * e.conv_expansion_factor, d_ctc=e.output_dim)
    tied = bool(getattr(hf, "tie_word_embeddings", True) and getattr(t, "tie_word_embeddings", True))
    lm = granite_lm_config(t, lora_config(adapter), tied)
    projector = ProjectorConfig(kind="window_qformer", d_in=p.hidden_size, d_out=t.hidden_size, extra=dict(
        n_heads=p.num_attention_heads, n_layers=p.num_hidden_layers, d_mlp=p.intermediate_size, eps=p.layer_norm_eps,
        window=hf.window_size, n_queries=hf.window_size // hf.downsample_rate,
        embedding_multiplier=float(t.embedding_multiplier)))
    return LALMConfig(family="granite_speech", lm=lm, encoder=encoder, projector=projector,
                      audio_token_id=int(hf.audio_token_id), max_audio_seconds=None)
