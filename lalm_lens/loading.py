"""`HookedLALM.from_pretrained`: resolve a hub id or folder, find its family, build the model, stream the weights."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Optional, Union

import torch

from lalm_lens.families import Family, family_for
from lalm_lens.families.base import text_config
from lalm_lens.hub import Checkpoint, resolve_checkpoint
from weight_conversion.base import finish_loading, load_checkpoint, stream

logger = logging.getLogger(__name__)


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def checkpoint_dtype(*configs) -> torch.dtype:
    """The first dtype a config names (float32 if none does)."""
    for config in configs:
        dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
        if isinstance(dtype, str):
            dtype = getattr(torch, dtype, None)
        if isinstance(dtype, torch.dtype):
            return dtype
    return torch.float32


def eos_token_ids(folder: Path, lm_config) -> tuple[int, ...]:
    """From `generation_config.json` if present, else the LM's config."""
    from transformers import GenerationConfig

    eos = None
    if (Path(folder) / "generation_config.json").is_file():
        eos = GenerationConfig.from_pretrained(folder).eos_token_id
    if eos is None:
        eos = getattr(lm_config, "eos_token_id", None)
    if eos is None:
        return ()
    return tuple(eos) if isinstance(eos, (list, tuple)) else (int(eos),)


def open_checkpoint(name_or_path: Union[str, Path, Checkpoint], **options) -> tuple[Checkpoint, Family, object]:
    """The checkpoint, its family and the family's config (options such as DeSTA's `llm_path=` checked)."""
    ckpt = resolve_checkpoint(name_or_path)
    family = family_for(ckpt.config().get("model_type"))
    return ckpt, family, family.open(ckpt, **options)


def load_pretrained(
    cls: type,
    name_or_path: Union[str, Path, Checkpoint],
    device: Union[str, torch.device, None] = None,
    dtype: Optional[torch.dtype] = None,
    **options,
):
    """`cls.from_pretrained`: build the model from a checkpoint without ever loading the original model.

    The model (the family's own class if it has one, else `cls`) is created on
    the meta device with what the loader knows (family, prompts, name), then
    materialised once on `device` and filled tensor by tensor, so peak memory
    stays near one copy of the weights. `dtype` defaults to the checkpoint's own
    (float32 if it names none).
    """
    ckpt, family, hf_config = open_checkpoint(name_or_path, **options)
    config = family.convert_config(hf_config)
    lm_config = text_config(hf_config)
    dtype = dtype or checkpoint_dtype(hf_config, lm_config)
    device = torch.device(device) if device is not None else default_device()
    for cfg in (config.lm, config.encoder):
        cfg.dtype, cfg.device = dtype, str(device)
    config.eos_token_ids = eos_token_ids(family.generation_folder(ckpt, hf_config), lm_config)
    prompts = family.prompts(ckpt, config, hf_config)
    name = str(ckpt.folder) if isinstance(name_or_path, Checkpoint) else str(name_or_path)
    with torch.device("meta"):
        model = (family.model_class or cls)(config, family=family, prompts=prompts, name_or_path=name)
    model.to_empty(device=device)
    model.reset_buffers()
    filled: set[str] = set()
    for source in family.sources(ckpt, config, hf_config):
        filled |= load_checkpoint(model, stream(source), source.key_map, what=source.what)
    finish_loading(model, filled, family.absent, what=f"checkpoint {ckpt.name}")
    return model.eval()
