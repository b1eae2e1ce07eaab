"""Keys and values that come from elsewhere: the protocol the attention takes, and the decoding cache.

An attention's queries see their own keys/values (projected in the same call)
and, before them, positions whose keys/values some other object holds: the
positions already decoded (`KVCache`), or in the trace engine the corrupted
run's prefix and a row's other positions (`lalm_lens.tracing.engines.prefix`).
Each such object is a `PastKV`: it knows how many positions it adds, and runs
`Attention.attend` (the one attention core) over them and the new keys.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional, Protocol

import torch
from jaxtyping import Float
from torch import Tensor

if TYPE_CHECKING:
    from lalm_lens.components.attention import Attention


class PastKV(Protocol):
    """Keys/values of positions before the queries' own, held by someone else (a cache, a shared prefix)."""

    def __len__(self) -> int:
        """How many positions come before the queries' own (the first query's sequence index)."""

    def attend(
        self,
        attn: Attention,
        q: Float[Tensor, "batch pos head d_head"],
        k: Float[Tensor, "batch pos kv_head d_head"],
        v: Float[Tensor, "batch pos kv_head d_head"],
        mask: Optional[Float[Tensor, "batch_or_1 1 pos keys"]],
    ) -> Float[Tensor, "batch pos head d_head"]:
        """`attn`'s attention of queries `q` over these positions, then over `k`/`v` (the queries' own)."""


class HeldKeys(Protocol):
    """Keys/values `Attention.attend` reads in place, never concatenated to the queries' own
    (a prefix shared by rows): it asks for their scores and their weighted sum."""

    def scores(self, q: Float[Tensor, "rows head pos d_head"]) -> Float[Tensor, "rows head pos held"]:
        """`q · k` (unscaled) against the held keys (expanded to the query heads)."""

    def weigh(self, pattern: Float[Tensor, "rows head pos held"]) -> Float[Tensor, "rows head pos d_head"]:
        """`pattern @ v` over the held values."""


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

    def attend(self, attn: Attention, q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor]) -> Tensor:
        """Cache the new keys/values, then attend over every position so far."""
        k, v = self.update(attn.layer, k, v)
        return attn.attend(q, k, v, mask)
