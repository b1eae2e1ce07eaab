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


def allowed_keys(
    q_idx: Int[Tensor, "q"], k_idx: Int[Tensor, "k"], *, causal: bool, sliding_window: Optional[int] = None
) -> Optional[Bool[Tensor, "q k"]]:
    """Which keys (at sequence indices `k_idx`) each query (at `q_idx`) may see: the one place the causal and
    sliding-window rules live (the fast tracing engine uses it for its prefix + suffix keys too)."""
    if not causal and sliding_window is None:
        return None
    # Comparisons of broadcast index vectors: one bool [q, k] tensor, never an int64 one (8x the bytes, ~7 GB
    # for the ~30k positions of a 20-minute Music Flamingo clip).
    q, k = q_idx[:, None], k_idx[None, :]
    allowed = k <= q if causal else torch.ones(len(q_idx), len(k_idx), dtype=torch.bool, device=q_idx.device)
    if sliding_window is not None:
        allowed &= k > q - sliding_window
    return allowed


def additive(allowed: Bool[Tensor, "..."], dtype: torch.dtype) -> Tensor:
    """0 where allowed, the dtype's most negative finite value where not."""
    bias = torch.zeros(allowed.shape, dtype=dtype, device=allowed.device)
    return bias.masked_fill_(~allowed, torch.finfo(dtype).min)


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
    allowed = allowed_keys(q_positions, torch.arange(k_len, device=device), causal=causal,
                           sliding_window=sliding_window)
    allowed = None if allowed is None else allowed[None, None]
    if key_valid is not None and not bool(key_valid.all()):
        padding = key_valid[:, None, None, :].to(device)
        allowed = padding if allowed is None else allowed & padding
    return None if allowed is None else additive(allowed, dtype)


@dataclass(frozen=True)
class LMContext:
    """What every LM block of one forward shares: the attention mask `[batch | 1, 1, q, k]`
    (None: nothing masked) and the rotary cos/sin tables `[batch, q, 1, d_head]`."""

    mask: Optional[Tensor]
    rope: Optional[tuple[Tensor, Tensor]]
