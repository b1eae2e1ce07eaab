"""Attention with rotary positions, and its grouped-query variant."""

from typing import Optional

from jaxtyping import Float
from torch import Tensor
from transformer_lens.hook_points import HookPoint

from lalm_lens.components.attention import Attention
from lalm_lens.components.rotary import Rotary
from lalm_lens.config import BlockConfig


class RotaryAttention(Attention):
    """Rotates q and k by the model-level cos/sin tables (`hook_rot_q`, `hook_rot_k`)."""

    def __init__(self, cfg: BlockConfig, layer: int = 0):
        super().__init__(cfg, layer)
        self.hook_rot_q = HookPoint()  # [batch, pos, head, d_head]
        self.hook_rot_k = HookPoint()  # [batch, pos, kv_head, d_head]

    def position_query(
        self, q: Float[Tensor, "batch pos head d_head"], rope: Optional[tuple[Tensor, Tensor]]
    ) -> Float[Tensor, "batch pos head d_head"]:
        """q rotated by the model-level cos/sin tables `rope` (`[batch, pos, 1, d_head]` each)."""
        return self.hook_rot_q(Rotary.rotate(q, *rope))

    def position_key(
        self, k: Float[Tensor, "batch pos kv_head d_head"], rope: Optional[tuple[Tensor, Tensor]]
    ) -> Float[Tensor, "batch pos kv_head d_head"]:
        """k rotated as q is."""
        return self.hook_rot_k(Rotary.rotate(k, *rope))


class GroupedQueryAttention(RotaryAttention):
    """Fewer key/value heads than query heads; each K/V head serves a group of queries."""

    @property
    def n_kv_heads(self) -> int:
        """`cfg.n_key_value_heads`, fewer than the query heads."""
        return self.cfg.n_key_value_heads

    def expand_kv(
        self, k: Float[Tensor, "batch pos kv_head d_head"], v: Float[Tensor, "batch pos kv_head d_head"]
    ) -> tuple[Float[Tensor, "batch pos head d_head"], Float[Tensor, "batch pos head d_head"]]:
        """Each key/value head repeated for the consecutive query heads of its group."""
        groups = self.cfg.n_heads // self.cfg.n_key_value_heads
        return k.repeat_interleave(groups, dim=2), v.repeat_interleave(groups, dim=2)
