"""Large random checkpoints written straight to disk (no model in memory), for loading-memory checks.

`write_checkpoint` takes a Hugging Face config, finds the original model's
tensor names and shapes on the meta device, and writes sharded safetensors
filled with a repeated random tile, in the config's dtype (bf16, as released),
plus the `config.json` and shard index that `HookedLALM.from_pretrained` reads.
Writing holds one tile in memory, whatever the checkpoint's size.
`real_width(name, ...)` gives a released model's config with fewer layers.
"""

from __future__ import annotations

import copy
import json
import math
import struct
from pathlib import Path

import torch

from tests import real_configs

DTYPE_NAMES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}
SHAPES = {  # name -> (released config, HF config class, HF model class, encoder layer-count key)
    "qwen2_audio": (real_configs.QWEN2_AUDIO_7B_INSTRUCT, "Qwen2AudioConfig", "Qwen2AudioForConditionalGeneration",
                    "encoder_layers"),
    "voxtral_mini": (real_configs.VOXTRAL_MINI_3B, "VoxtralConfig", "VoxtralForConditionalGeneration",
                     "num_hidden_layers"),
}


def real_width(name: str, lm_layers: int = 2, encoder_layers: int = 2, audio: dict | None = None, **text_overrides):
    """The released config of `name` (widths and vocabulary as published) with fewer layers, bf16;
    `audio` and `text_overrides` change other fields of the audio and text configs."""
    import transformers

    values, config_cls, model_cls, key = SHAPES[name]
    values = copy.deepcopy(values)
    values.pop("model_type")
    values["text_config"].update(num_hidden_layers=lm_layers, **text_overrides)
    values["audio_config"].update({key: encoder_layers, **(audio or {})})
    config = getattr(transformers, config_cls)(**values)
    config.dtype = torch.bfloat16
    return config, getattr(transformers, model_cls)


def write_checkpoint(folder: Path, config, model_cls, shard_bytes: int = 2 << 30, seed: int = 0) -> int:
    """Write a random checkpoint of `model_cls(config)` in `config.dtype`; returns its size in bytes."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    with torch.device("meta"):
        shapes = {k: tuple(v.shape) for k, v in model_cls(config).state_dict().items()}
    config.save_pretrained(folder)
    dtype = config.dtype
    tile = (torch.randn(1 << 20, generator=torch.Generator().manual_seed(seed)) * 0.02).to(dtype)
    tile_bytes = tile.view(torch.uint8).numpy().tobytes()
    size = tile.element_size()
    shards: list[list[str]] = [[]]
    used = 0
    for key, shape in shapes.items():
        n = math.prod(shape) * size
        if shards[-1] and used + n > shard_bytes:
            shards.append([])
            used = 0
        shards[-1].append(key)
        used += n
    weight_map, total = {}, 0
    for i, keys in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        header, offset = {"__metadata__": {"format": "pt"}}, 0
        for key in keys:
            n = math.prod(shapes[key]) * size
            header[key] = {"dtype": DTYPE_NAMES[dtype], "shape": list(shapes[key]), "data_offsets": [offset, offset + n]}
            offset += n
            weight_map[key] = name
        raw = json.dumps(header).encode()
        raw += b" " * (-len(raw) % 8)
        with open(folder / name, "wb") as f:
            f.write(struct.pack("<Q", len(raw)) + raw)
            for key in keys:
                left = math.prod(shapes[key]) * size
                while left:
                    part = tile_bytes[: min(left, len(tile_bytes))]
                    f.write(part)
                    left -= len(part)
        total += offset
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": total},
                                                                     "weight_map": weight_map}))
    return total


LOAD_CHILD = r"""
import json, resource, sys
import psutil, torch
import transformers  # noqa: F401  (part of the import baseline)
from lalm_lens import HookedLALM
if len(sys.argv) > 3:  # a small model of the same family first: the modules a load imports join the baseline
    HookedLALM.from_pretrained(sys.argv[3], device="cpu", dtype=getattr(torch, sys.argv[2]))
    import ctypes, gc
    gc.collect()
    ctypes.CDLL("libc.so.6").malloc_trim(0)
base = psutil.Process().memory_info().rss
model = HookedLALM.from_pretrained(sys.argv[1], device="cpu", dtype=getattr(torch, sys.argv[2]))
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
params = sum(p.numel() * p.element_size() for p in model.parameters())
print(json.dumps(dict(base=base, peak=peak, params=params)))
"""


def load_peak(folder: Path, dtype: str = "float32", warmup: Path | None = None) -> dict:
    """`HookedLALM.from_pretrained(folder, dtype=...)` in a fresh process: its peak resident memory above the
    imports (`added`), the parameters' bytes, and their ratio. `warmup`: a small checkpoint of the same family
    loaded first, so that the modules a load imports count in the baseline (for small checkpoints)."""
    import os
    import subprocess
    import sys

    root = str(Path(__file__).resolve().parents[1])
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, os.environ.get("PYTHONPATH", "")]))
    out = subprocess.run([sys.executable, "-c", LOAD_CHILD, str(folder), dtype] + ([str(warmup)] if warmup else []),
                         capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"loading {folder} failed:\n{out.stderr[-3000:]}")
    stats = json.loads(out.stdout.strip().splitlines()[-1])
    stats["added"] = stats["peak"] - stats["base"]
    stats["ratio"] = stats["added"] / stats["params"]
    return stats
