"""Attention masks, built once per forward and shared by every block.

A mask is an additive bias `[batch | 1, 1, q, k]` holding 0 where a query may
attend and the dtype's most negative value where it may not (a finite value,
so rows with no allowed key stay finite, as in Hugging Face).
"""

from dataclasses import dataclass
from typing import Optional

import torch
from jaxtyping import Bool, Int
from torch import Tensor


def attention_bias(
    q_positions: Int[Tensor, "q"],
    k_len: int,
    *,
    causal: bool,
    key_valid: Optional[Bool[Tensor, "batch k"]] = None,
    sliding_window: Optional[int] = None,
    dtype: torch.dtype = torch.float32,
) -> Optional[Tensor]:
    """Additive mask for queries at sequence indices `q_positions` over keys `0..k_len-1`.

    `q_positions` are indices into the key sequence (with a key/value cache the
    first query sits at the cache length). Returns None when nothing is masked.
    """
    device = q_positions.device
    allowed = None
    if causal or sliding_window is not None:
        k_idx = torch.arange(k_len, device=device)
        delta = q_positions[:, None] - k_idx[None, :]
        allowed = delta >= 0 if causal else torch.ones_like(delta, dtype=torch.bool)
        if sliding_window is not None:
            allowed = allowed & (delta < sliding_window)
        allowed = allowed[None, None]
    if key_valid is not None and not bool(key_valid.all()):
        padding = key_valid[:, None, None, :].to(device)
        allowed = padding if allowed is None else allowed & padding
    if allowed is None:
        return None
    bias = torch.zeros(allowed.shape, dtype=dtype, device=device)
    return bias.masked_fill_(~allowed, torch.finfo(dtype).min)


@dataclass(frozen=True)
class LMContext:
    """What every LM block of one forward shares: the attention mask `[batch | 1, 1, q, k]`
    (None: nothing masked) and the rotary cos/sin tables `[batch, q, 1, d_head]`."""

    mask: Optional[Tensor]
    rope: Optional[tuple[Tensor, Tensor]]

    def queries(self, start: int, stop: Optional[int] = None) -> "LMContext":
        """The context of queries `start..stop-1` only (keys unchanged)."""
        mask = None if self.mask is None else self.mask[..., start:stop, :]
        rope = None if self.rope is None else tuple(t[:, start:stop] for t in self.rope)
        return LMContext(mask, rope)
