"""The fast engine's keys and values from elsewhere (`PastKV`s): a shared prefix, and a row's other positions.

Both hand their keys to `Attention.attend`, the one attention core, so the
attention's hooks see one `[rows, head, q, all keys]` score and pattern tensor
as in a plain forward.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lalm_lens.components.attention import Attention
from lalm_lens.components.past_kv import PastKV


@dataclass(frozen=True)
class LayerPrefix:
    """One layer's prefix keys/values, expanded to the query heads, as `HeldKeys` of the attention core.

    `regular`: rows are `groups x n_prefix` with the prefix index inner, so the
    prefix is read by one matmul per prefix and never copied per row; otherwise
    `keys`/`values` were gathered per row.
    """

    keys: Float[Tensor, "n_prefix head prefix d_head"]  # or [rows, head, prefix, d_head] if not regular
    values: Float[Tensor, "n_prefix head prefix d_head"]
    regular: bool

    def scores(self, q: Float[Tensor, "rows head pos d_head"]) -> Float[Tensor, "rows head pos prefix"]:
        if not self.regular:
            return q @ self.keys.transpose(-1, -2)
        n_prefix, heads, prefix_len, d_head = self.keys.shape
        rows, n_q = q.shape[0], q.shape[2]
        qg = q.reshape(rows // n_prefix, n_prefix, heads, n_q, d_head)
        return (qg @ self.keys[None].transpose(-1, -2)).reshape(rows, heads, n_q, prefix_len)

    def weigh(self, pattern: Float[Tensor, "rows head pos prefix"]) -> Float[Tensor, "rows head pos d_head"]:
        if not self.regular:
            return pattern @ self.values
        n_prefix, heads, prefix_len, d_head = self.values.shape
        rows, n_q = pattern.shape[0], pattern.shape[2]
        pg = pattern.reshape(rows // n_prefix, n_prefix, heads, n_q, prefix_len)
        return (pg @ self.values[None]).reshape(rows, heads, n_q, d_head)


class PrefixKV:
    """Read-only keys/values of earlier positions for rows that re-run a suffix (a `PastKV`).

    `keys[layer]` is `[n_prefixes, prefix_len, n_kv_heads, d_head]` and row r reads
    prefix `row_prefix[r]`; its own suffix keys follow the prefix. When rows are
    `groups x n_prefixes` with the prefix index inner, the prefix is never copied
    per row. The mask (`[rows, 1, q, prefix + suffix]`) hides prefix slots a row does not have.
    """

    def __init__(self, keys: list[Optional[Tensor]], values: list[Optional[Tensor]], row_prefix: Int[Tensor, "rows"]):
        self.keys, self.values, self.row_prefix = keys, values, row_prefix

    def __len__(self) -> int:
        return self.keys[-1].shape[1]

    def rows(self, n: int) -> PrefixKV:
        """The same prefixes for the first `n` rows only."""
        return PrefixKV(self.keys, self.values, self.row_prefix[:n])

    def _regular(self) -> bool:
        n_prefix, rows = self.keys[-1].shape[0], self.row_prefix.shape[0]
        if rows % n_prefix:
            return False
        pattern = torch.arange(n_prefix, device=self.row_prefix.device).repeat(rows // n_prefix)
        return bool(torch.equal(self.row_prefix, pattern))

    def layer(self, attn: Attention) -> LayerPrefix:
        """The prefix of `attn`'s layer as the core reads it."""
        # plain transposes/views, not einops: this runs once per layer of every suffix batch, and each new
        # shape would cost einops a recipe (the first trace in a process paid ~30 ms of them)
        pk, pv = attn.expand_kv(self.keys[attn.layer], self.values[attn.layer])
        pk, pv = pk.transpose(1, 2), pv.transpose(1, 2)  # [n_prefix, head, prefix_len, d_head]
        regular = self._regular()
        if not regular:
            pk, pv = pk[self.row_prefix], pv[self.row_prefix]
        return LayerPrefix(pk, pv, regular)

    def attend(self, attn: Attention, q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor]) -> Tensor:
        return attn.attend(q, k, v, mask, self.layer(attn))


class PrependedKV:
    """Per-row keys/values `[rows, pos, kv_head, d_head]` of the row's other positions, put before the
    query's own (and behind `prefix`, another `PastKV`, if given): the answer-only last block."""

    def __init__(self, keys: Tensor, values: Tensor, prefix: Optional[PastKV] = None):
        self.keys, self.values, self.prefix = keys, values, prefix

    def __len__(self) -> int:
        return (len(self.prefix) if self.prefix is not None else 0) + self.keys.shape[1]

    def attend(self, attn: Attention, q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor]) -> Tensor:
        k, v = torch.cat([self.keys, k], dim=1), torch.cat([self.values, v], dim=1)
        if self.prefix is not None:
            return self.prefix.attend(attn, q, k, v, mask)
        return attn.attend(q, k, v, mask)
