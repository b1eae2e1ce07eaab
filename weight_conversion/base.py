"""Declarative checkpoint-key maps and a streaming safetensors reader.

A family's converter lists `RULES`: checkpoint key pattern (`{}` = a layer
index) -> (our parameter name, transform). `load_checkpoint` streams every
tensor of every shard once, maps it, checks its shape and copies it into the
model, then fails on any checkpoint key no rule maps and on any parameter no
key filled (except those the family declares absent, kept at zero).

Tensors are read with plain file reads, one at a time, rather than through a
memory map: a mapped shard counts towards resident memory until it is closed,
which would double the peak for a single-file checkpoint.
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

Transform = Callable[[Tensor, Tensor], Tensor]  # (checkpoint tensor, our parameter) -> tensor


class CheckpointError(RuntimeError):
    """The checkpoint does not match what the family's converter expects."""


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
    with open(path, "rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        header = json.loads(f.read(n))
    header.pop("__metadata__", None)
    return header, 8 + n


def read_safetensors(path: Path) -> Iterator[tuple[str, Tensor]]:
    """Yield `(key, tensor)` for one file, each tensor in its own buffer."""
    header, start = safetensors_header(path)
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


def read_tensors(path: Path) -> Iterator[tuple[str, Tensor]]:
    """`(key, tensor)` pairs of a safetensors file, or of a torch state-dict file (`.pth`/`.bin`)."""
    if path.suffix == ".safetensors":
        yield from read_safetensors(path)
        return
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    yield from state.items()


def checkpoint_shards(folder: Path, stem: str = "model") -> list[Path]:
    """The safetensors files of a checkpoint; fails clearly on missing shards."""
    index = folder / f"{stem}.safetensors.index.json"
    if index.is_file():
        names = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        missing = [n for n in names if not (folder / n).is_file()]
        if missing:
            raise CheckpointError(
                f"{index.name} lists {len(names)} shard(s) but {len(missing)} are missing from {folder}: "
                f"{', '.join(missing)}"
            )
        return [folder / n for n in names]
    single = folder / f"{stem}.safetensors"
    if single.is_file():
        return [single]
    raise CheckpointError(f"no {stem}.safetensors (or sharded index) in {folder}")


# ---------------------------------------------------------------- loading
def load_checkpoint(
    model: nn.Module,
    files: Iterable[Path],
    key_map: KeyMap,
    prefix: str = "",
    what: str = "checkpoint",
) -> set[str]:
    """Stream `files` into `model` (names get `prefix`); returns the parameter names filled."""
    params = dict(model.named_parameters())
    filled: set[str] = set()
    unmapped: list[str] = []
    with torch.no_grad():
        for path in files:
            for key, tensor in read_tensors(path):
                try:
                    found = key_map.lookup(key)
                except KeyError:
                    unmapped.append(key)
                    continue
                if found is None or found[0] is None:
                    continue
                names = [prefix + n for n in (found[0] if isinstance(found[0], tuple) else (found[0],))]
                missing = [n for n in names if n not in params]
                if missing:
                    raise CheckpointError(f"{what} key {key!r} maps to {missing[0]!r}, which this model does not have")
                targets = [params[n] for n in names]
                try:
                    values = found[1](tensor, targets if len(targets) > 1 else targets[0])
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
                    target.copy_(value)
                    filled.add(name)
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
