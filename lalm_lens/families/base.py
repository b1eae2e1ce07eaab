"""`Family`: everything the library knows about one model family, as one frozen value.

Generic code (loading, `verify`, the CLI) reaches a family only through
`lalm_lens.families.REGISTRY`. A family's conversion (config builder, key
table) lives in `weight_conversion/<name>.py`; its prompt builder and
reference sit beside this file in `lalm_lens/families/<name>/`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Optional

from torch import nn

from lalm_lens.config import LALMConfig
from lalm_lens.hub import Checkpoint
from weight_conversion.base import WeightSource
from weight_conversion.keys import KeyMap


@dataclass(frozen=True)
class Reference:
    """The original model, for `verify` and the agreement tests.

    `forward(original, inp)` returns an object with `.logits` and `.hidden_states`
    (the LM's: the input embeddings, each layer's output, and last the final
    norm's output, as Hugging Face returns them) and, where the original exposes
    them, `.audio_embeds`; `encoder_layers(original)` lists the audio encoder's
    blocks (their outputs are compared layer by layer).
    """

    load: Callable[[Checkpoint, Any, Any, Any], nn.Module]  # (checkpoint, family config, dtype, device)
    encoder_layers: Callable[[nn.Module], list]
    forward: Callable[[nn.Module, Mapping], Any]


def read_hf_config(ckpt: Checkpoint):
    """`AutoConfig` of the folder (the default `Family.read_config`)."""
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(ckpt.folder)


def text_config(hf_config):
    """The LM's part of a family config (composite HF configs name it `text_config`)."""
    return getattr(hf_config, "text_config", None) or hf_config


@dataclass(frozen=True)
class Option:
    """An extra keyword a family takes (`from_pretrained`'s or `prepare`'s); the CLI offers it as `--<name>`."""

    name: str
    help: str

    @property
    def flag(self) -> str:
        return "--" + self.name.replace("_", "-")


@dataclass(frozen=True)
class Family:
    """One model family. Adding a family = one `Family` value, one key-table module, one registry line."""

    name: str
    model_types: tuple[str, ...]  # `model_type` values of config.json it handles
    convert_config: Callable[[Any], LALMConfig]  # the family config -> ours
    key_map: Callable[[LALMConfig], KeyMap]  # checkpoint keys -> our parameters
    absent: tuple[str, ...]  # our parameters with no checkpoint counterpart (kept at zero), fnmatch patterns
    prompts: Callable[[Checkpoint, LALMConfig, Any], Optional[Any]]  # -> a PromptBuilder, or None without a processor
    reference: Reference
    read_config: Callable[..., Any] = read_hf_config  # (checkpoint, **options) -> the family config
    options: tuple[Option, ...] = ()  # extra `from_pretrained` keywords this family takes
    prepare_options: tuple[Option, ...] = ()  # extra `model.prepare` keywords its prompt builder takes
    weight_sources: Optional[Callable[[Checkpoint, LALMConfig, Any], list[WeightSource]]] = None
    shard_filter: Optional[Callable[[str], bool]] = None  # read only the shards holding keys it accepts
    generation_folder: Callable[[Checkpoint, Any], Path] = lambda ckpt, hf_config: ckpt.folder  # generation_config.json
    model_class: Optional[type] = None  # a `HookedLALM` subclass for a new way of wiring the parts; None: `HookedLALM`
    # (built as `model_class(config, family=..., prompts=..., name_or_path=...)`)

    @classmethod
    def from_conversion(cls, conversion, **fields) -> "Family":
        """A family whose config builder, key table and absent list are those of a `weight_conversion` module."""
        return cls(convert_config=conversion.convert_config, key_map=conversion.key_map, absent=conversion.ABSENT,
                   **fields)

    def sources(self, ckpt: Checkpoint, config: LALMConfig, hf_config) -> list[WeightSource]:
        """Where the weights are: by default the checkpoint's own shards, read with `key_map`."""
        if self.weight_sources is not None:
            return self.weight_sources(ckpt, config, hf_config)
        return [WeightSource(ckpt.shards(keep=self.shard_filter), self.key_map(config), f"checkpoint {ckpt.name}")]

    def open(self, ckpt: Checkpoint, **options):
        """The family config of a checkpoint, refusing keywords this family does not take."""
        names = [option.name for option in self.options]
        unknown = sorted(set(options) - set(names))
        if unknown:
            takes = f"it takes {', '.join(names)}" if names else "it takes none"
            raise TypeError(f"{', '.join(unknown)} do(es) not apply to {self.name} checkpoints ({takes})")
        return self.read_config(ckpt, **options)
