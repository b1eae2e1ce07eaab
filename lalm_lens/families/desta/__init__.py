"""DeSTA2.5-Audio (`DeSTA-ntu/DeSTA2.5-Audio-Llama-3.1-8B`) and DeSTA2 (`DeSTA-ntu/DeSTA2-8B-beta`).

A DeSTA checkpoint holds only the connector: its `config.json` names the Whisper
encoder and the Llama LM, each loaded from its own folder or hub id
(`encoder_path=` / `llm_path=` override them). Conversion in
`weight_conversion/desta.py`; prompts in `prompts.py`; the reference, assembled
from `transformers` parts as the original wires them, in `reference.py`.
DeSTA2 is DeSTA2.5 with its version, prompts and connector file replaced.
"""

from __future__ import annotations

from dataclasses import replace

from lalm_lens.families.base import Family, Option, Reference
from lalm_lens.families.desta.prompts import Desta2Prompts, DestaPrompts
from lalm_lens.hub import Checkpoint, resolve_checkpoint
from weight_conversion import desta as conversion
from weight_conversion.base import WeightSource
from weight_conversion.errors import CheckpointError


def read_sources(ckpt: Checkpoint, version=conversion.DESTA25, encoder_path=None, llm_path=None):
    """The DeSTA config, with its encoder and LM resolved (downloaded if hub ids) and their configs read."""
    from transformers import AutoConfig, AutoTokenizer

    desta = ckpt.config()
    encoder = resolve_checkpoint(encoder_path or desta.get("encoder_model_id") or desta.get("whisper_model_id"))
    llm = resolve_checkpoint(llm_path or desta.get("llm_model_id") or desta.get("llama_model_id"))
    tokenizer = AutoTokenizer.from_pretrained(llm.folder)
    placeholder = desta.get("placeholder_token", "<|reserved_special_token_87|>")
    placeholder_id = tokenizer.convert_tokens_to_ids(placeholder)
    if placeholder_id is None or placeholder_id == tokenizer.unk_token_id:
        raise CheckpointError(f"the LM tokenizer in {llm.folder} has no placeholder token {placeholder!r}")
    return conversion.DestaSources(desta, version, encoder.folder, llm.folder, AutoConfig.from_pretrained(encoder.folder),
                                   AutoConfig.from_pretrained(llm.folder), placeholder_id,
                                   extra={"encoder": encoder, "llm": llm})


def connector_files(ckpt: Checkpoint, version) -> tuple:
    if version.connector_file is None:
        return ckpt.shards()
    path = ckpt.fetch([version.connector_file])[0]
    if not path.is_file():
        raise CheckpointError(f"no {version.connector_file} in {ckpt.folder}")
    return (path,)


def weight_sources(ckpt: Checkpoint, config, src) -> list[WeightSource]:
    """Whisper, the LM and the connector, each with its own key map."""
    encoder, llm = src.extra["encoder"], src.extra["llm"]
    return [
        WeightSource(encoder.shards(), conversion.whisper_key_map(), f"Whisper checkpoint {encoder.name}"),
        WeightSource(llm.shards(), conversion.llm_key_map(config), f"LM checkpoint {llm.name}"),
        WeightSource(connector_files(ckpt, src.version), conversion.connector_key_map(config), f"DeSTA checkpoint {ckpt.name}"),
    ]


def load_reference(ckpt, src, dtype, device):
    from lalm_lens.families.desta.reference import load_reference as build

    return build(connector_files(ckpt, src.version), src, conversion.convert_config(src), dtype=dtype, device=device)


DESTA25 = Family(
    name="desta25",
    model_types=("desta25",),
    convert_config=conversion.convert_config,
    key_map=conversion.llm_key_map,
    absent=conversion.ABSENT,
    prompts=lambda ckpt, config, src: DestaPrompts.from_config(config),
    reference=Reference(load_reference, lambda ref: list(ref.encoder.layers), lambda ref, inp: ref(**inp)),
    read_config=read_sources,
    options=(Option("encoder_path", "a local Whisper folder instead of the config's encoder id"),
             Option("llm_path", "a local LM folder instead of the config's LM id")),
    prepare_options=(Option("transcript", "the transcript (default: Whisper decoding)"),),
    weight_sources=weight_sources,
    generation_folder=lambda ckpt, src: src.llm_path,
)

DESTA2 = replace(
    DESTA25,
    name="desta2",
    model_types=("DestaModel",),
    prompts=lambda ckpt, config, src: Desta2Prompts.from_config(config),
    read_config=lambda ckpt, **options: read_sources(ckpt, conversion.DESTA2, **options),
)
