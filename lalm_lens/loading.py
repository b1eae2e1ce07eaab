"""`HookedLALM.from_pretrained`: resolve a hub id or folder, detect the family, stream the weights."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Optional, Union

import torch

from weight_conversion import family_for
from weight_conversion.base import CheckpointError, checkpoint_shards, finish_loading, load_checkpoint

logger = logging.getLogger(__name__)

HUB_PATTERNS = ["*.json", "*.safetensors", "*.jinja", "*.model", "*.tiktoken", "*.txt", "tekken.json"]


def resolve_checkpoint(name_or_path: Union[str, Path]) -> Path:
    """A local folder holding the checkpoint (downloading a hub id if needed)."""
    if str(name_or_path) == "demo":
        from lalm_lens.demo import DEMO_DIR

        if not (DEMO_DIR / "config.json").is_file():
            raise CheckpointError(f"the demo model is missing from {DEMO_DIR}; rebuild it with python -m lalm_lens.demo.train")
        return DEMO_DIR
    path = Path(name_or_path).expanduser()
    if path.is_dir():
        return path
    if path.exists():
        raise CheckpointError(f"{path} is a file; give the checkpoint folder (with config.json)")
    name = str(name_or_path)
    if name.count("/") != 1 or name.startswith((".", "/", "~")):
        raise CheckpointError(f"no checkpoint folder {name!r}, and it is not a hub id of the form 'owner/name'")
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(name, allow_patterns=HUB_PATTERNS))
    except Exception as err:  # offline, unknown repo, gated repo, ...
        raise CheckpointError(f"could not fetch {name!r} from the Hugging Face hub: {err}") from err


def read_config(folder: Path) -> dict:
    config_file = folder / "config.json"
    if not config_file.is_file():
        raise CheckpointError(f"no config.json in {folder}")
    return json.loads(config_file.read_text())


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


def eos_token_ids(folder: Path, text_config) -> tuple[int, ...]:
    """From `generation_config.json` if present, else the (text) config."""
    from transformers import GenerationConfig

    eos = None
    if (folder / "generation_config.json").is_file():
        eos = GenerationConfig.from_pretrained(folder).eos_token_id
    if eos is None:
        eos = getattr(text_config, "eos_token_id", None)
    if eos is None:
        return ()
    return tuple(eos) if isinstance(eos, (list, tuple)) else (int(eos),)


def load_pretrained(
    name_or_path: Union[str, Path],
    device: Union[str, torch.device, None] = None,
    dtype: Optional[torch.dtype] = None,
    **overrides,
):
    """Build a `HookedLALM` from a checkpoint without ever loading the original model.

    The model is created on the meta device, materialised once on `device`, and
    filled tensor by tensor, so peak memory stays near one copy of the weights.
    `dtype` defaults to the checkpoint's own (float32 if it names none).
    """
    from lalm_lens.model import HookedLALM

    folder = resolve_checkpoint(name_or_path)
    family = family_for(read_config(folder).get("model_type"))
    hf_config = family.load_config(folder, **overrides) if hasattr(family, "load_config") else _auto_config(folder)
    config = family.convert_config(hf_config)
    text_config = getattr(hf_config, "llama", None) or getattr(hf_config, "text_config", hf_config)
    dtype = dtype or checkpoint_dtype(hf_config, text_config)
    device = torch.device(device) if device is not None else default_device()
    for cfg in (config.lm, config.encoder):
        cfg.dtype, cfg.device = dtype, str(device)
    config.eos_token_ids = eos_token_ids(Path(getattr(hf_config, "llm_path", folder)), text_config)
    with torch.device("meta"):
        model = HookedLALM(config)
    model.to_empty(device=device)
    model.reset_buffers()
    if hasattr(family, "weight_sources"):
        sources = family.weight_sources(folder, config, hf_config)
    else:
        sources = [(checkpoint_shards(folder), family.key_map(config), f"checkpoint {folder.name}")]
    filled: set[str] = set()
    for files, key_map, what in sources:
        filled |= load_checkpoint(model, files, key_map, what=what)
    finish_loading(model, filled, family.ABSENT, what=f"checkpoint {folder.name}")
    model.eval()
    model.input_builder = family.input_builder(folder, config)
    if model.input_builder is not None:
        model.processor = model.input_builder.processor
        model.tokenizer = model.input_builder.tokenizer
    model.name_or_path = str(name_or_path)
    return model


def _auto_config(folder: Path):
    from transformers import AutoConfig

    return AutoConfig.from_pretrained(folder)
