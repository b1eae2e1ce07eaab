"""Grouped-query rotary attention with an RMSNorm on every query and key head (Qwen3).

`q_norm` and `k_norm` (weights `[d_head]`, shared by the heads) normalise each head's
query and key after the projection and before RoPE, as Qwen3's attention does. Hooks:
`hook_q`/`hook_k` are the projections before the norm; `q_norm.hook_scale|hook_normalized`
and `k_norm.*` the norm's steps (`[batch, pos, head, 1]`, `[batch, pos, head, d_head]`);
`hook_rot_q`/`hook_rot_k` the normalised, rotated heads.
"""

from typing import Optional

from jaxtyping import Float
from torch import Tensor

from lalm_lens.components.rms_norm import RMSNorm
from lalm_lens.components.rotary_attention import GroupedQueryAttention
from lalm_lens.config import BlockConfig


class QKNormAttention(GroupedQueryAttention):
    """`GroupedQueryAttention` with `q_norm`/`k_norm` before RoPE."""

    def __init__(self, cfg: BlockConfig, layer: int = 0):
        super().__init__(cfg, layer)
        self.q_norm = RMSNorm(cfg.d_head, cfg.eps, cfg.dtype)
        self.k_norm = RMSNorm(cfg.d_head, cfg.eps, cfg.dtype)

    def position_query(
        self, q: Float[Tensor, "batch pos head d_head"], rope: Optional[tuple[Tensor, Tensor]]
    ) -> Float[Tensor, "batch pos head d_head"]:
        """Each query head normalised (`q_norm`), then rotated."""
        return super().position_query(self.q_norm(q), rope)

    def position_key(
        self, k: Float[Tensor, "batch pos kv_head d_head"], rope: Optional[tuple[Tensor, Tensor]]
    ) -> Float[Tensor, "batch pos kv_head d_head"]:
        """Each key head normalised (`k_norm`), then rotated."""
        return super().position_key(self.k_norm(k), rope)
