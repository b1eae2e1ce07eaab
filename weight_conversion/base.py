"""Loading a checkpoint into a model: weight sources streamed through their key tables.

A `WeightSource` is checkpoint files and the key table (`keys.py`) that reads
them. `load_checkpoint` streams every tensor of every file once (`reading.py`),
maps it, checks its shape and copies it into the model, then fails on any
checkpoint key no rule maps; `finish_loading` fails on any parameter no key
filled (except those the family declares absent, kept at zero).

While loading, each tensor is read, cast and checked one slab at a time
straight into its parameter (`stored.py`), so the peak stays near one copy of
the weights in the target dtype.
"""

from __future__ import annotations

import fnmatch
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import torch
from torch import Tensor, nn

from weight_conversion.errors import CheckpointError
from weight_conversion.keys import DROP, KeyMap
from weight_conversion.reading import read_tensors
from weight_conversion.stored import StoredTensor, all_finite, copy_stored, is_view_of


@dataclass(frozen=True)
class WeightSource:
    """Checkpoint files and the key map that reads them (a family may have several, e.g. DeSTA)."""

    files: tuple[Path, ...]
    key_map: KeyMap
    what: str  # how errors name it, e.g. "checkpoint Qwen2-Audio-7B"


def stream(source: WeightSource) -> Iterator[tuple[str, Tensor, str]]:
    """`(key, tensor, file name)` for every tensor of a source (safetensors ones as `StoredTensor`s)."""
    for path in source.files:
        for key, tensor in read_tensors(Path(path), lazy=True):
            yield key, tensor, Path(path).name



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
            if found is DROP:
                continue
            names = list(found.names)
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
                values = found.transform(source, targets if len(targets) > 1 else targets[0])
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
                    values = found.transform(stored.load(), targets if len(targets) > 1 else targets[0])
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
