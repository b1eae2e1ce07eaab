"""Key/value cache for incremental decoding and suffix re-runs."""

from typing import Optional

import torch
from torch import Tensor


class KVCache:
    """Per-layer keys and values (after RoPE, before GQA expansion).

    Tensors are `[batch, pos, n_kv_heads, d_head]`. `update` appends and returns
    the full keys/values for the layer; `frozen=True` returns the concatenation
    without storing it (used to run many suffixes against one shared prefix).
    """

    def __init__(self, n_layers: int, frozen: bool = False):
        self.keys: list[Optional[Tensor]] = [None] * n_layers
        self.values: list[Optional[Tensor]] = [None] * n_layers
        self.frozen = frozen

    def __len__(self) -> int:
        """Number of cached positions."""
        k = next((k for k in self.keys if k is not None), None)
        return 0 if k is None else k.shape[1]

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        past_k, past_v = self.keys[layer], self.values[layer]
        if past_k is not None:
            if past_k.shape[0] != k.shape[0]:
                past_k = past_k.expand(k.shape[0], *past_k.shape[1:])
                past_v = past_v.expand(v.shape[0], *past_v.shape[1:])
            k = torch.cat([past_k, k], dim=1)
            v = torch.cat([past_v, v], dim=1)
        if not self.frozen:
            self.keys[layer], self.values[layer] = k, v
        return k, v

    def select(self, index: Tensor) -> "KVCache":
        """A cache holding only the batch rows in `index`."""
        out = KVCache(len(self.keys), self.frozen)
        out.keys = [None if k is None else k[index] for k in self.keys]
        out.values = [None if v is None else v[index] for v in self.values]
        return out
