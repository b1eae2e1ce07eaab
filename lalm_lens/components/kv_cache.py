"""Key/value caches: incremental decoding, and many suffixes over one shared prefix."""

from typing import Optional

import torch
from torch import Tensor


class KVCache:
    """Per-layer keys and values `[batch, pos, n_kv_heads, d_head]` (after RoPE, before GQA expansion).

    `update` appends the new positions and returns the full keys/values.
    """

    shared = False

    def __init__(self, n_layers: int):
        self.keys: list[Optional[Tensor]] = [None] * n_layers
        self.values: list[Optional[Tensor]] = [None] * n_layers

    def __len__(self) -> int:
        """Number of cached positions."""
        k = next((k for k in self.keys if k is not None), None)
        return 0 if k is None else k.shape[1]

    def update(self, layer: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        if self.keys[layer] is not None:
            k = torch.cat([self.keys[layer], k], dim=1)
            v = torch.cat([self.values[layer], v], dim=1)
        self.keys[layer], self.values[layer] = k, v
        return k, v


class PrefixKV:
    """Read-only keys/values of earlier positions for rows that re-run a suffix (the trace engine).

    `keys[layer]` is `[n_prefixes, prefix_len, n_kv_heads, d_head]` and row r reads
    prefix `row_prefix[r]`; its own suffix keys follow the prefix. When rows are
    `groups x n_prefixes` with the prefix index inner, the prefix is never copied
    per row. The scores and pattern pass through the attention's hooks as one
    `[rows, head, q, prefix + suffix]` tensor; the mask (`[rows, 1, q, prefix + suffix]`)
    hides prefix slots a row does not have.
    """

    shared = True

    def __init__(self, keys: list[Tensor], values: list[Tensor], row_prefix: Tensor):
        self.keys, self.values, self.row_prefix = keys, values, row_prefix

    def __len__(self) -> int:
        return self.keys[-1].shape[1]

    def rows(self, n: int) -> "PrefixKV":
        """The same prefixes for the first `n` rows only."""
        return PrefixKV(self.keys, self.values, self.row_prefix[:n])

    def _regular(self) -> bool:
        n_prefix, rows = self.keys[-1].shape[0], self.row_prefix.shape[0]
        if rows % n_prefix:
            return False
        pattern = torch.arange(n_prefix, device=self.row_prefix.device).repeat(rows // n_prefix)
        return bool(torch.equal(self.row_prefix, pattern))

    def attend(self, attn, q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor]) -> Tensor:
        # plain transposes/views, not einops: this runs once per layer of every suffix batch, and each new
        # shape would cost einops a recipe (the first trace in a process paid ~30 ms of them)
        pk, pv = attn.expand_kv(self.keys[attn.layer], self.values[attn.layer])
        k, v = attn.expand_kv(k, v)
        n_prefix, prefix_len = pk.shape[:2]
        rows, n_q, heads, d_head = q.shape
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [rows, head, pos, d_head]
        pk, pv = pk.transpose(1, 2), pv.transpose(1, 2)  # [n_prefix, head, prefix_len, d_head]
        regular = self._regular()
        if regular:  # rows = groups x n_prefix: one matmul per prefix, no copies
            qg = q.reshape(rows // n_prefix, n_prefix, heads, n_q, d_head)
            s_prefix = (qg @ pk[None].transpose(-1, -2)).reshape(rows, heads, n_q, prefix_len)
        else:
            pk, pv = pk[self.row_prefix], pv[self.row_prefix]
            s_prefix = q @ pk.transpose(-1, -2)
        scores = torch.cat([s_prefix, q @ k.transpose(-1, -2)], dim=-1) * attn.scale
        if mask is not None:
            scores = scores + mask
        scores = attn.hook_attn_scores(scores)
        pattern = attn.hook_pattern(scores.softmax(-1, dtype=torch.float32).to(q.dtype))
        if regular:
            pg = pattern[..., :prefix_len].reshape(rows // n_prefix, n_prefix, heads, n_q, prefix_len)
            z_prefix = (pg @ pv[None]).reshape(rows, heads, n_q, d_head)
        else:
            z_prefix = pattern[..., :prefix_len] @ pv
        z = z_prefix + pattern[..., prefix_len:] @ v
        return z.transpose(1, 2)  # [rows, pos, head, d_head]
