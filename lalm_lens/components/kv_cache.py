"""The decoding cache: keys and values of the positions generated so far, a `PastKV`."""

from __future__ import annotations

from typing import Optional

import torch
from jaxtyping import Float
from torch import Tensor

from lalm_lens.components.past_kv import AttentionCore


class KVCache:
    """Per-layer keys and values `[batch, pos, n_kv_heads, d_head]` (after RoPE, before GQA expansion)
    of the positions decoded so far; a `PastKV` that grows by each call's new positions."""

    def __init__(self, n_layers: int):
        self.keys: list[Optional[Tensor]] = [None] * n_layers
        self.values: list[Optional[Tensor]] = [None] * n_layers

    def __len__(self) -> int:
        """Number of cached positions."""
        k = next((k for k in self.keys if k is not None), None)
        return 0 if k is None else k.shape[1]

    def update(
        self, layer: int, k: Float[Tensor, "batch new kv_head d_head"], v: Float[Tensor, "batch new kv_head d_head"]
    ) -> tuple[Float[Tensor, "batch pos kv_head d_head"], Float[Tensor, "batch pos kv_head d_head"]]:
        """Append the new positions of `layer`; the full keys and values."""
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=1)
            v = torch.cat([self.values[layer], v], dim=1)
        self.keys[layer], self.values[layer] = k, v
        return k, v

    def attend(self, attn: AttentionCore, q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor]) -> Tensor:
        """Cache the new keys/values, then attend over every position so far."""
        k, v = self.update(attn.layer, k, v)
        return attn.attend(q, k, v, mask)
