"""Checkpoint tensors read piece by piece, so that loading holds one copy of the weights and no more.

A `StoredTensor` is a tensor's place in a safetensors file. `copy_stored` fills a
parameter from it through the key map's transform — a view (transpose, head
split) worked out on the meta device — reading the file one slab at a time and
checking each slab for NaN/inf after the cast. The extra memory is one slab
(`SLAB` elements), not a second copy of the largest tensor in its file dtype
plus the temporaries of a whole-tensor finiteness check (`torch.isfinite` of a
150k x 3584 float32 embedding alone allocates ~2.5 GiB).
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, Optional

import torch
from torch import Tensor

from weight_conversion.errors import CheckpointError

SLAB = 1 << 20  # elements read, cast and checked at a time: 4 MiB of float32, small enough that the
# allocator reuses one slab's memory for the next (glibc maps larger blocks, then keeps freed ones in its heap)


@dataclass(frozen=True)
class StoredTensor:
    """A tensor in a safetensors file: where its bytes start, its shape and dtype; read on demand."""

    path: Path
    start: int  # byte offset of its first element in the file
    shape: tuple[int, ...]
    dtype: torch.dtype
    is_meta = False

    def numel(self) -> int:
        return math.prod(self.shape)

    def is_floating_point(self) -> bool:
        return self.dtype.is_floating_point

    def read(self, first: int = 0, count: Optional[int] = None, f: Optional[BinaryIO] = None) -> Tensor:
        """Elements `first .. first + count` of the flattened tensor, in a buffer of their own (`f`: the file,
        already open)."""
        count = self.numel() - first if count is None else count
        size = torch.empty((), dtype=self.dtype).element_size()
        buf = torch.empty(count * size, dtype=torch.uint8)
        with nullcontext(f) if f is not None else open(self.path, "rb") as f:
            f.seek(self.start + first * size)
            if count and f.readinto(buf.numpy()) != count * size:
                raise CheckpointError(f"{self.path.name} is truncated")
        return buf.view(self.dtype)

    def load(self) -> Tensor:
        """The whole tensor."""
        return self.read().view(self.shape)


def all_finite(t: Tensor) -> bool:
    """No NaN or inf, checked a slab at a time (no whole-size temporaries)."""
    flat = t.reshape(-1) if t.is_contiguous() else t.contiguous().view(-1)
    return all(bool(torch.isfinite(part).all()) for part in flat.split(SLAB))


def is_view_of(value: Tensor, base: Tensor) -> bool:
    return value is base or value._base is base


def copy_stored(stored: StoredTensor, view: Tensor, target: Tensor) -> bool:
    """Copy `stored`, seen through `view` (the transform applied to a meta tensor of its shape), into
    `target` slab by slab along the view's outermost dimension; False if any value is NaN/inf after the cast.

    Every element of a slab lies in one contiguous span of the file, because the view is a permutation
    of a contiguous layout: the outermost stride exceeds the reach of all the others."""
    if view.dim() == 0 or view.numel() <= SLAB:
        chunk = stored.read(view.storage_offset(), _reach(view))
        target.copy_(torch.as_strided(chunk, view.shape, view.stride()))
        return all_finite(target)
    d = max(range(view.dim()), key=lambda k: view.stride(k) if view.size(k) > 1 else -1)
    stride = view.stride(d)
    step = max(1, SLAB // max(stride, 1))
    with open(stored.path, "rb") as f:
        for i in range(0, view.size(d), step):
            part = view.narrow(d, i, min(step, view.size(d) - i))
            chunk = stored.read(part.storage_offset(), _reach(part), f)
            out = target.narrow(d, i, part.size(d))
            out.copy_(torch.as_strided(chunk, part.shape, part.stride()))
            if out.is_floating_point() and not bool(torch.isfinite(out).all()):
                return False
    return True


def _reach(view: Tensor) -> int:
    """How many elements of its storage a strided view spans, from its first."""
    return 1 + sum((n - 1) * s for n, s in zip(view.shape, view.stride()) if n > 0) if view.numel() else 0
