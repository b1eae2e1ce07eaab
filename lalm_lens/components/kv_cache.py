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


class SharedPrefixKV:
    """A read-only prefix shared by many rows: rows are `groups x n_prefix` (prefix row inner).

    Attention over `[prefix; own suffix]` is computed in two parts so the prefix
    keys/values are never copied per row; the scores and pattern still pass
    through the attention's hooks as one `[rows, head, q, prefix + suffix]` tensor.
    """

    shared = True

    def __init__(self, keys: list[Tensor], values: list[Tensor]):
        self.keys, self.values = keys, values  # per layer: [n_prefix, prefix_len, n_kv_heads, d_head]

    def __len__(self) -> int:
        return self.keys[0].shape[1]

    def attend(self, attn, q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor]) -> Tensor:
        pk, pv = attn.expand_kv(self.keys[attn.layer], self.values[attn.layer])
        k, v = attn.expand_kv(k, v)
        n_prefix, prefix_len = pk.shape[:2]
        rows, n_q, heads, d_head = q.shape
        groups = rows // n_prefix
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [rows, head, pos, d_head]
        pk, pv = pk.transpose(1, 2)[None], pv.transpose(1, 2)[None]  # [1, n_prefix, head, prefix, d_head]
        qg = q.reshape(groups, n_prefix, heads, n_q, d_head)
        s_prefix = (qg @ pk.transpose(-1, -2)).reshape(rows, heads, n_q, prefix_len)
        scores = torch.cat([s_prefix, q @ k.transpose(-1, -2)], dim=-1) * attn.scale
        if mask is not None:
            scores = scores + mask
        scores = attn.hook_attn_scores(scores)
        pattern = attn.hook_pattern(scores.softmax(-1, dtype=torch.float32).to(q.dtype))
        z_prefix = pattern[..., :prefix_len].reshape(groups, n_prefix, heads, n_q, prefix_len) @ pv
        z = z_prefix.reshape(rows, heads, n_q, d_head) + pattern[..., prefix_len:] @ v
        return z.transpose(1, 2)
