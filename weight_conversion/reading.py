"""Reading checkpoint files: safetensors tensors (whole, or as `StoredTensor`s read later), torch
state-dict files, and the shard list of a sharded checkpoint; every failure a `CheckpointError`.

Tensors are read with plain file reads rather than through a memory map (a
mapped shard counts towards resident memory until it is closed).
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Callable, Iterator, Optional

import torch
from torch import Tensor

from weight_conversion.errors import CheckpointError
from weight_conversion.stored import StoredTensor

_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool,
}


def safetensors_header(path: Path) -> tuple[dict, int]:
    """The tensor table of a safetensors file and where its data starts; a clear error if unreadable."""
    size = Path(path).stat().st_size
    try:
        with open(path, "rb") as f:
            (n,) = struct.unpack("<Q", f.read(8))
            if n > size - 8:
                raise ValueError(f"header length {n} exceeds the file ({size} bytes)")
            header = json.loads(f.read(n))
        if not isinstance(header, dict):
            raise ValueError("the header is not a JSON object")
    except (struct.error, ValueError, UnicodeDecodeError) as err:
        raise CheckpointError(f"{path} is not a readable safetensors file: {err}") from None
    header.pop("__metadata__", None)
    for key, info in header.items():
        if not isinstance(info, dict) or info.get("dtype") not in _DTYPES or "data_offsets" not in info:
            raise CheckpointError(f"{path}: tensor {key!r} has an unreadable entry in the header: {info!r}")
    return header, 8 + n


def read_safetensors(path: Path, lazy: bool = False) -> Iterator[tuple[str, Tensor]]:
    """Yield `(key, tensor)` for one file, each tensor in its own buffer (`lazy`: a `StoredTensor`,
    read when it is copied)."""
    header, start = safetensors_header(path)
    if lazy:
        size = Path(path).stat().st_size
        for key, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            if start + info["data_offsets"][1] > size:
                raise CheckpointError(f"{Path(path).name} is truncated (tensor {key})")
            yield key, StoredTensor(Path(path), start + info["data_offsets"][0], tuple(info["shape"]),
                                    _DTYPES[info["dtype"]])
        return
    with open(path, "rb") as f:
        for key, info in sorted(header.items(), key=lambda kv: kv[1]["data_offsets"][0]):
            begin, end = info["data_offsets"]
            f.seek(start + begin)
            buf = bytearray(end - begin)
            if f.readinto(buf) != len(buf):
                raise CheckpointError(f"{path.name} is truncated (tensor {key})")
            dtype = _DTYPES[info["dtype"]]
            tensor = torch.frombuffer(buf, dtype=dtype) if buf else torch.empty(0, dtype=dtype)
            yield key, tensor.view(info["shape"])


def read_tensors(path: Path, lazy: bool = False) -> Iterator[tuple[str, Tensor]]:
    """`(key, tensor)` pairs of a safetensors file (`StoredTensor`s with `lazy`), or of a torch
    state-dict file (`.pth`/`.bin`)."""
    if path.suffix == ".safetensors":
        yield from read_safetensors(path, lazy)
        return
    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception as err:  # pickle, zip or format errors of every kind
        raise CheckpointError(f"{path} is not a readable torch state dict: {err}") from None
    yield from state.items()


def shard_names(folder: Path, stem: str = "model", keep: Optional[Callable[[str], bool]] = None) -> list[str]:
    """The safetensors files a checkpoint's index lists (`stem.safetensors` without an index);
    with `keep`, only the shards holding at least one key it accepts (e.g. Qwen2.5-Omni's thinker)."""
    index = Path(folder) / f"{stem}.safetensors.index.json"
    if not index.is_file():
        return [f"{stem}.safetensors"]
    try:
        weight_map = json.loads(index.read_text())["weight_map"]
    except (ValueError, KeyError, TypeError) as err:
        raise CheckpointError(f"{index} is not a readable shard index: {err}") from None
    return sorted({file for key, file in weight_map.items() if keep is None or keep(key)})


def checkpoint_shards(folder: Path, stem: str = "model", keep: Optional[Callable[[str], bool]] = None) -> list[Path]:
    """The safetensors files of a checkpoint; fails clearly on missing shards."""
    folder = Path(folder)
    names = shard_names(folder, stem, keep)
    missing = [n for n in names if not (folder / n).is_file()]
    if missing and (folder / f"{stem}.safetensors.index.json").is_file():
        raise CheckpointError(
            f"{stem}.safetensors.index.json lists {len(names)} shard(s) but {len(missing)} are missing from {folder}: "
            f"{', '.join(missing)}"
        )
    if missing:
        raise CheckpointError(f"no {stem}.safetensors (or sharded index) in {folder}")
    return [folder / n for n in names]
