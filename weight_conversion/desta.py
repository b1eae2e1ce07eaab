"""DeSTA2.5-Audio (and DeSTA2) -> HookedLALM.

A DeSTA checkpoint holds only the connector; its `config.json` names the Whisper
encoder (`encoder_model_id`) and the Llama LM (`llm_model_id`), loaded from their
own folders or hub ids (override with `encoder_path=` / `llm_path=`). Three
weight sources, each streamed with its own key map:
- Whisper (`model.encoder.*`; the decoder and the final LayerNorm are unused),
- Llama (`model.*`, `lm_head.*`),
- the connector: `perception.connector.*` in DeSTA2.5's `model.safetensors`;
  unprefixed keys in DeSTA2's `qformer_connector.pth`.
DeSTA2.5 taps the outputs of Whisper layers (7, 15, 23, 31) for large-v3, chosen
by the encoder's size as the original does; DeSTA2 indexes `encoder_hidden_states`
(0 = embeddings), so its taps (2, 5, 8, 11) are the outputs of layers 1, 4, 7, 10.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from lalm_lens.config import LALMConfig, ProjectorConfig
from weight_conversion.base import CheckpointError, KeyMap, Rule, checkpoint_shards, heads_bias, heads_in, heads_out, transpose
from weight_conversion.common import lm_block_config, lm_rules, whisper_encoder_config, whisper_encoder_rules

MODEL_TYPES = ("desta25", "DestaModel")
# Whisper size (encoder layers) -> taps, as the originals pick them.
DESTA25_TAPS = {4: (0, 1, 2, 3), 12: (2, 5, 8, 11), 24: (5, 11, 17, 23), 32: (7, 15, 23, 31)}
DESTA2_TAPS = {4: (0, 1, 2, 3), 12: (2, 5, 8, 11), 24: (5, 11, 17, 23)}  # indices into encoder_hidden_states
N_QUERIES = 64
QFORMER_D_MLP = 3072  # BertConfig() default, kept by the original

ABSENT = ["audio_encoder.blocks.*.attn.b_K", "blocks.*.attn.b_*", "blocks.*.mlp.b_*", "unembed.b_U"]


@dataclass
class DestaSources:
    """The DeSTA config plus the resolved encoder and LM folders and their HF configs."""

    folder: Path
    desta: dict
    encoder_path: Path
    llm_path: Path
    whisper: object
    llama: object
    placeholder_id: int
    version: int  # 25 or 2
    extra: dict = field(default_factory=dict)


def load_config(folder: Path, encoder_path=None, llm_path=None, **_) -> DestaSources:
    import json

    from transformers import AutoConfig, AutoTokenizer

    from lalm_lens.loading import resolve_checkpoint

    desta = json.loads((Path(folder) / "config.json").read_text())
    version = 25 if desta.get("model_type") == "desta25" else 2
    enc_id = desta.get("encoder_model_id") or desta.get("whisper_model_id")
    llm_id = desta.get("llm_model_id") or desta.get("llama_model_id")
    encoder_path = resolve_checkpoint(encoder_path or enc_id)
    llm_path = resolve_checkpoint(llm_path or llm_id)
    tokenizer = AutoTokenizer.from_pretrained(llm_path)
    placeholder = desta.get("placeholder_token", "<|reserved_special_token_87|>")
    placeholder_id = tokenizer.convert_tokens_to_ids(placeholder)
    if placeholder_id is None or placeholder_id == tokenizer.unk_token_id:
        raise CheckpointError(f"the LM tokenizer in {llm_path} has no placeholder token {placeholder!r}")
    return DestaSources(Path(folder), desta, encoder_path, llm_path, AutoConfig.from_pretrained(encoder_path),
                        AutoConfig.from_pretrained(llm_path), placeholder_id, version)


def taps_for(src: DestaSources) -> tuple[int, ...]:
    n = src.whisper.encoder_layers
    table = DESTA25_TAPS if src.version == 25 else DESTA2_TAPS
    if n not in table:
        raise CheckpointError(f"no DeSTA tap layers are defined for a {n}-layer Whisper encoder (known: {sorted(table)})")
    taps = table[n]
    if src.version == 2:
        if 0 in taps:
            raise NotImplementedError("a DeSTA2 tap on the embeddings (encoder_hidden_states[0]) is not supported")
        taps = tuple(t - 1 for t in taps)  # encoder_hidden_states[i] is the output of layer i - 1
    return taps


def convert_config(src: DestaSources) -> LALMConfig:
    w = src.whisper
    n_layers = src.desta.get("qformer_num_hidden_layers", 2) if src.version == 25 else 2
    extra = dict(taps=taps_for(src), n_queries=src.desta.get("prompt_size", N_QUERIES), n_layers=n_layers,
                 hidden_state_taps=None if src.version == 25 else DESTA2_TAPS[src.whisper.encoder_layers],
                 n_heads=w.encoder_attention_heads, d_mlp=QFORMER_D_MLP, eps=1e-12,
                 checkpoint_prefix="perception.connector." if src.version == 25 else "")
    return LALMConfig(
        family="desta25" if src.version == 25 else "desta2",
        lm=lm_block_config(src.llama),
        encoder=whisper_encoder_config(w, pool=None, final_norm=False, mask_padding=False),
        projector=ProjectorConfig(kind="qformer", d_in=w.d_model, d_out=src.llama.hidden_size, extra=extra),
        audio_token_id=src.placeholder_id,
        max_audio_seconds=30.0,
        extra=dict(encoder_path=str(src.encoder_path), llm_path=str(src.llm_path), version=src.version,
                   audio_locator=src.desta.get("audio_locator", "<|AUDIO|>")),
    )


def connector_rules(prefix: str) -> list[Rule]:
    layer, ours = prefix + "qformer.layer.{}.", "audio_projector.layers.{}."
    rules = [
        Rule(prefix + "layer_prompts.{}", "audio_projector.layer_prompts.{}"),
        Rule(prefix + "layer_weights", "audio_projector.layer_weights"),
        Rule(prefix + "proj.0.weight", "audio_projector.ln.w"),
        Rule(prefix + "proj.0.bias", "audio_projector.ln.b"),
        Rule(prefix + "proj.1.weight", "audio_projector.W", transpose),
        Rule(prefix + "proj.1.bias", "audio_projector.b"),
        Rule(layer + "intermediate.dense.weight", ours + "mlp.W_in", transpose),
        Rule(layer + "intermediate.dense.bias", ours + "mlp.b_in"),
        Rule(layer + "output.dense.weight", ours + "mlp.W_out", transpose),
        Rule(layer + "output.dense.bias", ours + "mlp.b_out"),
        Rule(layer + "output.LayerNorm.weight", ours + "ln3.w"),
        Rule(layer + "output.LayerNorm.bias", ours + "ln3.b"),
    ]
    for theirs, attn, ln in (("attention", "attn", "ln1"), ("crossattention", "cross_attn", "ln2")):
        for x, name in (("query", "Q"), ("key", "K"), ("value", "V")):
            rules.append(Rule(layer + f"{theirs}.self.{x}.weight", ours + f"{attn}.W_{name}", heads_in))
            rules.append(Rule(layer + f"{theirs}.self.{x}.bias", ours + f"{attn}.b_{name}", heads_bias))
        rules += [
            Rule(layer + f"{theirs}.output.dense.weight", ours + f"{attn}.W_O", heads_out),
            Rule(layer + f"{theirs}.output.dense.bias", ours + f"{attn}.b_O"),
            Rule(layer + f"{theirs}.output.LayerNorm.weight", ours + f"{ln}.w"),
            Rule(layer + f"{theirs}.output.LayerNorm.bias", ours + f"{ln}.b"),
        ]
    return rules


def whisper_key_map() -> KeyMap:
    rules = [r for r in whisper_encoder_rules("model.encoder.") if not r.target.startswith("audio_encoder.ln_post")]
    return KeyMap(rules + [Rule("model.encoder.layer_norm.weight", None), Rule("model.encoder.layer_norm.bias", None)],
                  drop_prefixes=("model.decoder.", "proj_out."))


def connector_files(folder: Path, version: int) -> list[Path]:
    if version == 25:
        return checkpoint_shards(folder)
    path = folder / "qformer_connector.pth"
    if not path.is_file():
        raise CheckpointError(f"no qformer_connector.pth in {folder}")
    return [path]


def weight_sources(folder: Path, config: LALMConfig, src: DestaSources):
    """(files, key map, name) for each of the three checkpoints."""
    llama = KeyMap(lm_rules("model.", "lm_head.", tied=config.lm.tie_word_embeddings))
    connector = KeyMap(connector_rules(config.projector.extra["checkpoint_prefix"]))
    return [
        (checkpoint_shards(src.encoder_path), whisper_key_map(), f"Whisper checkpoint {src.encoder_path.name}"),
        (checkpoint_shards(src.llm_path), llama, f"LM checkpoint {src.llm_path.name}"),
        (connector_files(folder, src.version), connector, f"DeSTA checkpoint {folder.name}"),
    ]


def input_builder(folder, config: LALMConfig):
    from lalm_lens.inputs.desta import DestaInputs

    return DestaInputs.from_paths(config)


def reference_model(folder, dtype, device, **overrides):
    from lalm_lens.reference.desta import load_reference

    src = load_config(Path(folder), **overrides)
    config = convert_config(src)
    return load_reference(src.encoder_path, src.llm_path, connector_files(Path(folder), src.version), config,
                          dtype=dtype, device=device)


def reference_encoder_layers(ref):
    return list(ref.encoder.layers)


def reference_forward(ref, inp):
    return ref(**inp)
