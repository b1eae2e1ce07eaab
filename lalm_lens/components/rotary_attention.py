"""Attention with rotary positions, and its grouped-query variant."""

from typing import Optional

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

    def position_query(self, q: Tensor, rope: Optional[tuple[Tensor, Tensor]]) -> Tensor:
        return self.hook_rot_q(Rotary.rotate(q, *rope))

    def position_key(self, k: Tensor, rope: Optional[tuple[Tensor, Tensor]]) -> Tensor:
        return self.hook_rot_k(Rotary.rotate(k, *rope))


class GroupedQueryAttention(RotaryAttention):
    """Fewer key/value heads than query heads; each K/V head serves a group of queries."""

    @property
    def n_kv_heads(self) -> int:
        return self.cfg.n_key_value_heads

    def expand_kv(self, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        groups = self.cfg.n_heads // self.cfg.n_key_value_heads
        return k.repeat_interleave(groups, dim=2), v.repeat_interleave(groups, dim=2)
