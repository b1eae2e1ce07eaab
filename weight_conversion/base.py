"""Declarative checkpoint-key maps and a streaming safetensors reader.

A family's converter lists `RULES`: checkpoint key pattern (`{}` = a layer
index) -> (our parameter name, transform). `load_checkpoint` streams every
tensor of every shard once, maps it, checks its shape and copies it into the
model, then fails on any checkpoint key no rule maps and on any parameter no
key filled (except those the family declares absent, kept at zero).

Tensors are read with plain file reads rather than through a memory map (a
mapped shard counts towards resident memory until it is closed). While loading,
each tensor is read, cast and checked one slab at a time straight into its
parameter (`stored.py`), so the peak stays near one copy of the weights in the
target dtype.
"""

from __future__ import annotations

import fnmatch
import json
import re
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Optional

import torch
from torch import Tensor, nn

from weight_conversion.stored import StoredTensor, all_finite, copy_stored, is_view_of

Transform = Callable[[Tensor, Tensor], Tensor]  # (checkpoint tensor, our parameter) -> tensor


class CheckpointError(RuntimeError):
    """The checkpoint does not match what the family's converter expects."""


class UnknownFamilyError(ValueError):
    """config.json names a model type no family handles."""


# ---------------------------------------------------------------- transforms (target shape drives them)
def same(w: Tensor, target: Tensor) -> Tensor:
    return w


def transpose(w: Tensor, target: Tensor) -> Tensor:
    """nn.Linear `[out, in]` -> `[in, out]`."""
    return w.T


def heads_in(w: Tensor, target: Tensor) -> Tensor:
    """q/k/v `[heads * d_head, d_model]` -> `[heads, d_model, d_head]`."""
    heads, d_model, d_head = target.shape
    return w.view(heads, d_head, d_model).transpose(1, 2)


def heads_bias(w: Tensor, target: Tensor) -> Tensor:
    """q/k/v bias `[heads * d_head]` -> `[heads, d_head]`."""
    return w.view(target.shape)


def heads_out(w: Tensor, target: Tensor) -> Tensor:
    """o_proj `[d_model, heads * d_head]` -> `[heads, d_head, d_model]`."""
    return w.T.reshape(target.shape)


def split(n: int, then: Transform = same):
    """For a fused checkpoint tensor (e.g. q|k|v rows): cut it into `n` equal parts along
    dim 0, then `then` each part for its own target."""

    def transform(w: Tensor, targets) -> tuple:
        return tuple(then(part, t) for part, t in zip(w.chunk(n, dim=0), targets))

    return transform


@dataclass(frozen=True)
class Rule:
    pattern: str  # checkpoint key, `{}` for an integer slot
    target: Optional[str | tuple]  # our parameter(s), same slots; None drops the key; a tuple for fused keys
    transform: Transform = same

    def compile(self) -> re.Pattern:
        return re.compile("^" + re.escape(self.pattern).replace(r"\{\}", r"(\d+)") + "$")


class KeyMap:
    """Checkpoint keys -> parameter names, with prefix aliases applied first."""

    def __init__(self, rules: Iterable[Rule], aliases: Optional[dict[str, str]] = None, drop_prefixes: tuple = ()):
        self.rules = [(rule, rule.compile()) for rule in rules]
        self.aliases = sorted((aliases or {}).items(), key=lambda kv: -len(kv[0]))
        self.drop_prefixes = tuple(drop_prefixes)  # keys the model does not use (e.g. a Whisper decoder)

    def canonical(self, key: str) -> str:
        for old, new in self.aliases:
            if key.startswith(old):
                return new + key[len(old):]
        return key

    def lookup(self, key: str) -> Optional[tuple[Optional[str], Transform]]:
        key = self.canonical(key)
        if key.startswith(self.drop_prefixes) and self.drop_prefixes:
            return None
        for rule, regex in self.rules:
            m = regex.match(key)
            if m:
                if rule.target is None:
                    return None, rule.transform
                targets = rule.target if isinstance(rule.target, tuple) else (rule.target,)
                filled_in = []
                for target in targets:
                    for slot in m.groups():
                        target = target.replace("{}", slot, 1)
                    filled_in.append(target)
                return (tuple(filled_in) if isinstance(rule.target, tuple) else filled_in[0]), rule.transform
        raise KeyError(key)


# ---------------------------------------------------------------- reading
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


@dataclass(frozen=True)
class WeightSource:
    """Checkpoint files and the key map that reads them (a family may have several, e.g. DeSTA)."""

    files: tuple[Path, ...]
    key_map: "KeyMap"
    what: str  # how errors name it, e.g. "checkpoint Qwen2-Audio-7B"


def stream(source: WeightSource) -> Iterator[tuple[str, Tensor, str]]:
    """`(key, tensor, file name)` for every tensor of a source (safetensors ones as `StoredTensor`s)."""
    for path in source.files:
        for key, tensor in read_tensors(Path(path), lazy=True):
            yield key, tensor, Path(path).name


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


# ---------------------------------------------------------------- loading
def load_checkpoint(
    model: nn.Module,
    tensors: Iterable[tuple[str, Tensor, str]],
    key_map: KeyMap,
    what: str = "checkpoint",
) -> set[str]:
    """Copy `(key, tensor, file)` triples into `model` through `key_map`; returns the parameter names filled.

    Fails, naming the file and key, on a key no rule maps, a shape that does not
    fit, an integer tensor where a float weight belongs, or a NaN/inf value.
    Meta tensors are mapped and shape-checked without copying (`check_key_coverage`).
    """
    params = dict(model.named_parameters())
    filled: set[str] = set()
    unmapped: list[str] = []
    with torch.no_grad():
        for key, tensor, file in tensors:
            try:
                found = key_map.lookup(key)
            except KeyError:
                unmapped.append(key)
                continue
            if found is None or found[0] is None:
                continue
            names = list(found[0]) if isinstance(found[0], tuple) else [found[0]]
            missing = [n for n in names if n not in params]
            if missing:
                raise CheckpointError(f"{what} key {key!r} maps to {missing[0]!r}, which this model does not have")
            targets = [params[n] for n in names]
            if targets[0].is_floating_point() and not (tensor.is_floating_point() or tensor.is_meta):
                raise CheckpointError(f"{what}: {file} holds {key!r} as {tensor.dtype}; {names[0]} is a floating-point "
                                      "weight (the file is corrupt or not this model's checkpoint)")
            stored = tensor if isinstance(tensor, StoredTensor) else None
            source = torch.empty(stored.shape, dtype=stored.dtype, device="meta") if stored else tensor
            try:
                values = found[1](source, targets if len(targets) > 1 else targets[0])
            except RuntimeError as err:
                raise CheckpointError(
                    f"{what} key {key!r} has shape {tuple(tensor.shape)}, which does not fit "
                    f"{', '.join(f'{n} {tuple(t.shape)}' for n, t in zip(names, targets))}: {err}"
                ) from None
            for name, target, value in zip(names, targets, values if len(targets) > 1 else (values,)):
                if value.shape != target.shape:
                    raise CheckpointError(
                        f"{what} key {key!r} has shape {tuple(tensor.shape)}; {name} needs {tuple(target.shape)}"
                    )
                filled.add(name)
            if any(t.is_meta for t in targets):
                continue
            if stored is not None and len(targets) == 1 and is_view_of(values, source):
                finite = copy_stored(stored, values, targets[0])  # slab by slab: no second copy
            else:  # a fused key, or a transform that copies: the whole tensor, read once
                if stored is not None:
                    values = found[1](stored.load(), targets if len(targets) > 1 else targets[0])
                finite = True
                for target, value in zip(targets, values if len(targets) > 1 else (values,)):
                    target.copy_(value)
                    finite = finite and (not target.is_floating_point() or all_finite(target))
            if not finite:
                raise CheckpointError(f"{what}: {file} holds NaN or infinite values in {key!r} ({', '.join(names)})")
    if unmapped:
        shown = ", ".join(unmapped[:8]) + (f" and {len(unmapped) - 8} more" if len(unmapped) > 8 else "")
        raise CheckpointError(f"{what} has {len(unmapped)} key(s) this converter does not know: {shown}")
    return filled


def finish_loading(model: nn.Module, filled: set[str], absent: Iterable[str], what: str = "checkpoint") -> None:
    """Zero the declared-absent parameters; fail on any other parameter left unfilled."""
    absent = list(absent)
    missing = []
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name in filled:
                continue
            if any(fnmatch.fnmatchcase(name, pat) for pat in absent):
                p.zero_()
            else:
                missing.append(name)
    if missing:
        shown = ", ".join(missing[:8]) + (f" and {len(missing) - 8} more" if len(missing) > 8 else "")
        raise CheckpointError(f"{what} lacks weights for {len(missing)} parameter(s): {shown}")
