"""The last block at the answer position only.

After the last block only the answer position is read (`ln_final`, `unembed`),
and inside it the other positions reach the answer only through their keys and
values. So the last block can run on the answer position alone, over keys and
values projected (and rotated) for the others: per row that skips their
attention, output projection and MLP at that layer, most of a layer's work.

The shortcut is exact where the traced state, restored at a non-answer position
of the last layer, can reach the answer only through the residual entering the
block (`resid_pre`, restored before the keys are projected) or not at all (the
other `SAFE_STATES`). The fast engine runs no suffix where the user has hooks on
the blocks, so only the engine's own hooks fire here.
"""

from __future__ import annotations

from typing import Optional

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from lalm_lens.components.past_kv import PastKV
from lalm_lens.components.masks import LMContext
from lalm_lens.tracing.engines.prefix import PrependedKV

SAFE_STATES = frozenset({"resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "z"})


def answer_only(
    block: nn.Module,
    x: Float[Tensor, "rows pos d_model"],
    at: Int[Tensor, "rows"],
    ctx: LMContext,
    prefix: Optional[PastKV] = None,
) -> Float[Tensor, "rows 1 d_model"]:
    """`block(x, ...)[r, at[r]]` for every row r, computing the block only at those positions.

    `ctx` is the full call's (queries = the positions of `x`, keys = the prefix then
    `x`): the answer query sees the prefix and the positions of `x` before it
    (their keys from this call), then its own key (`PrependedKV`).
    """
    rows = torch.arange(x.shape[0], device=x.device)
    k, v = block.attn.key_value(block.ln1(x), ctx.rope)
    n_prefix = len(prefix) if prefix is not None else 0
    if ctx.mask is None or ctx.mask.shape[0] != x.shape[0]:
        raise ValueError("answer_only needs the per-row causal mask of the full call")
    q_mask = ctx.mask[rows, :, at][:, :, None].clone()  # [rows, 1, 1, prefix + pos]
    q_mask[rows, 0, 0, n_prefix + at] = torch.finfo(q_mask.dtype).min  # the query's key: its own, appended last
    mask = torch.cat([q_mask, q_mask.new_zeros(*q_mask.shape[:-1], 1)], dim=-1)
    rope = None if ctx.rope is None else tuple(t[rows, at][:, None] for t in ctx.rope)
    return block(x[rows, at][:, None], mask, rope, PrependedKV(k, v, prefix))
