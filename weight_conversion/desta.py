"""DeSTA2.5-Audio (and DeSTA2, as a diff of it) -> HookedLALM.

A DeSTA checkpoint holds only the connector; its `config.json` names the Whisper
encoder (`encoder_model_id`) and the Llama LM (`llm_model_id`), loaded from their
own folders or hub ids (`lalm_lens.families.desta` resolves them). Three key
maps, one per checkpoint:
- Whisper (`model.encoder.*`; the decoder and the final LayerNorm are unused),
- Llama (`model.*`, `lm_head.*`),
- the connector: `perception.connector.*` in DeSTA2.5's `model.safetensors`;
  unprefixed keys in DeSTA2's `qformer_connector.pth`.
DeSTA2.5 taps the outputs of Whisper layers (7, 15, 23, 31) for large-v3, chosen
by the encoder's size as the original does; DeSTA2 indexes `encoder_hidden_states`
(0 = embeddings), so its taps (2, 5, 8, 11) are the outputs of layers 1, 4, 7, 10.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Optional

from lalm_lens.config import LALMConfig, ProjectorConfig
from weight_conversion.common import lm_block_config, lm_rules, whisper_encoder_config, whisper_encoder_rules
from weight_conversion.errors import CheckpointError
from weight_conversion.keys import KeyMap, Rule, heads_bias, heads_in, heads_out, transpose

N_QUERIES = 64
QFORMER_D_MLP = 3072  # BertConfig() default, kept by the original
ABSENT = ("audio_encoder.blocks.*.attn.b_K", "blocks.*.attn.b_*", "blocks.*.mlp.b_*", "unembed.b_U")


@dataclass(frozen=True)
class DestaVersion:
    """What one DeSTA release fixes. DeSTA2 is `DESTA25` with the fields it changes replaced."""

    family: str
    taps: dict  # Whisper encoder layers -> tapped layers, as the original picks them
    taps_are_hidden_states: bool  # DeSTA2 indexes `encoder_hidden_states` (0 = the embeddings)
    qformer_layers_key: Optional[str]  # the config key of the Q-Former depth; None: 2 layers, fixed
    checkpoint_prefix: str  # of the connector's keys
    connector_file: Optional[str]  # None: the checkpoint's own safetensors; else this torch file


DESTA25 = DestaVersion(
    family="desta25", taps={4: (0, 1, 2, 3), 12: (2, 5, 8, 11), 24: (5, 11, 17, 23), 32: (7, 15, 23, 31)},
    taps_are_hidden_states=False, qformer_layers_key="qformer_num_hidden_layers",
    checkpoint_prefix="perception.connector.", connector_file=None,
)
DESTA2 = replace(
    DESTA25, family="desta2", taps={4: (0, 1, 2, 3), 12: (2, 5, 8, 11), 24: (5, 11, 17, 23)},
    taps_are_hidden_states=True, qformer_layers_key=None, checkpoint_prefix="", connector_file="qformer_connector.pth",
)


@dataclass
class DestaSources:
    """The DeSTA config plus the resolved encoder and LM folders and their HF configs."""

    desta: dict
    version: DestaVersion
    encoder_path: Path
    llm_path: Path
    whisper: Any  # WhisperConfig
    llama: Any  # LlamaConfig
    placeholder_id: int
    extra: dict = field(default_factory=dict)

    @property
    def text_config(self):
        """The LM's config (its dtype and EOS ids are the model's), as composite HF configs name it."""
        return self.llama


def taps_for(src: DestaSources) -> tuple[int, ...]:
    """The encoder layers whose outputs the Q-Former reads."""
    n = src.whisper.encoder_layers
    if n not in src.version.taps:
        raise CheckpointError(f"no DeSTA tap layers are defined for a {n}-layer Whisper encoder "
                              f"(known: {sorted(src.version.taps)})")
    taps = src.version.taps[n]
    if src.version.taps_are_hidden_states:
        if 0 in taps:
            raise NotImplementedError("a DeSTA2 tap on the embeddings (encoder_hidden_states[0]) is not supported")
        taps = tuple(t - 1 for t in taps)  # encoder_hidden_states[i] is the output of layer i - 1
    return taps


def convert_config(src: DestaSources) -> LALMConfig:
    w, v = src.whisper, src.version
    n_layers = src.desta.get(v.qformer_layers_key, 2) if v.qformer_layers_key else 2
    extra = dict(taps=taps_for(src), n_queries=src.desta.get("prompt_size", N_QUERIES), n_layers=n_layers,
                 hidden_state_taps=v.taps[w.encoder_layers] if v.taps_are_hidden_states else None,
                 n_heads=w.encoder_attention_heads, d_mlp=QFORMER_D_MLP, eps=1e-12, checkpoint_prefix=v.checkpoint_prefix)
    return LALMConfig(
        family=v.family,
        lm=lm_block_config(src.llama),
        encoder=whisper_encoder_config(w, kind="whisper", pool=None, final_norm=False),
        projector=ProjectorConfig(kind="qformer", d_in=w.d_model, d_out=src.llama.hidden_size, extra=extra),
        audio_token_id=src.placeholder_id,
        max_audio_seconds=30.0,
        extra=dict(encoder_path=str(src.encoder_path), llm_path=str(src.llm_path),
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
    """Whisper's `model.encoder.*`; the decoder, `proj_out` and the final LayerNorm are not used."""
    rules = [r for r in whisper_encoder_rules("model.encoder.") if not r.target.startswith("audio_encoder.ln_post")]
    return KeyMap(rules + [Rule("model.encoder.layer_norm.weight", None), Rule("model.encoder.layer_norm.bias", None)],
                  drop_prefixes=("model.decoder.", "proj_out."))


def llm_key_map(config: LALMConfig) -> KeyMap:
    return KeyMap(lm_rules("model.", "lm_head.", tied=config.lm.tie_word_embeddings))


def connector_key_map(config: LALMConfig) -> KeyMap:
    return KeyMap(connector_rules(config.projector.extra["checkpoint_prefix"]))
