"""Keys and values that come from elsewhere: the protocols the attention core takes.

An attention's queries see their own keys/values (projected in the same call)
and, before them, positions whose keys/values some other object holds: the
positions already decoded (`kv_cache.KVCache`), or in the trace engine the corrupted
run's prefix and a row's other positions (`lalm_lens.tracing.engines.prefix`).
Each such object is a `PastKV`: it knows how many positions it adds, and runs
the attention's one core (`Attention.attend`) over them and the new keys. The
protocols name no class, so the attention and every holder of keys import this
module and not each other.
"""

from __future__ import annotations

from typing import Optional, Protocol

from jaxtyping import Float
from torch import Tensor


class AttentionCore(Protocol):
    """What a `PastKV` needs of the attention it serves: its layer and its one core."""

    layer: int

    def attend(
        self,
        q: Float[Tensor, "batch pos head d_head"],
        k: Float[Tensor, "batch keys kv_head d_head"],
        v: Float[Tensor, "batch keys kv_head d_head"],
        mask: Optional[Tensor],
        held: Optional["HeldKeys"] = None,
    ) -> Float[Tensor, "batch pos head d_head"]: ...


class PastKV(Protocol):
    """Keys/values of positions before the queries' own, held by someone else (a cache, a shared prefix)."""

    def __len__(self) -> int:
        """How many positions come before the queries' own (the first query's sequence index)."""

    def attend(
        self,
        attn: AttentionCore,
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
