"""The last block at the answer position only.

After the last block only the answer position is read (`ln_final`, `unembed`),
and inside it the other positions reach the answer only through their keys and
values. So the last block can run on the answer position alone, over keys and
values projected (and rotated) for the others: per row that skips their
attention, output projection and MLP at that layer, most of a layer's work.

The shortcut is exact where the traced state, restored at a non-answer position
of the last layer, can reach the answer only through the residual entering the
block (`resid_pre`, restored before the keys are projected) or not at all (the
other `SAFE_STATES`), and where nothing else hooks the last block (user hooks
see the full tensors on the ordinary path).
"""

from __future__ import annotations

from typing import Optional

import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

SAFE_STATES = frozenset({"resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "z"})


class PrependedKV:
    """Per-row keys/values of earlier positions at one layer, put before the queries' own.

    Optionally behind a `SharedPrefixKV` (the corrupted run's prefix); the
    attention's hooks still see one `[rows, head, 1, all keys]` pattern.
    """

    shared = True

    def __init__(self, keys: Tensor, values: Tensor, prefix=None):
        self.keys, self.values, self.prefix = keys, values, prefix

    def __len__(self) -> int:
        return (len(self.prefix) if self.prefix is not None else 0) + self.keys.shape[1]

    def attend(self, attn, q: Tensor, k: Tensor, v: Tensor, mask: Optional[Tensor]) -> Tensor:
        k, v = torch.cat([self.keys, k], dim=1), torch.cat([self.values, v], dim=1)
        if self.prefix is not None:
            return self.prefix.attend(attn, q, k, v, mask)
        return attn.attend(q, k, v, mask)


def usable(block: nn.Module, states: str) -> bool:
    """Whether the shortcut is exact for `states` and no foreign hook sits on `block`."""
    return states in SAFE_STATES and not any(isinstance(m, HookPoint) and m.has_hooks() for m in block.modules())


def answer_only(
    block: nn.Module,
    x: Float[Tensor, "rows pos d_model"],
    at: int,
    mask: Optional[Tensor],
    rope: Optional[tuple[Tensor, Tensor]],
    prefix=None,
) -> tuple[Float[Tensor, "rows 1 d_model"], Tensor, Tensor]:
    """`block(x, mask, rope, prefix)[:, at:at + 1]`, plus the block's keys/values for every position of `x`.

    `mask` and `rope` are those of the full call (queries = the positions of `x`,
    keys = the prefix then `x`); hooks on the block fire for the answer position.
    """
    k, v = block.attn.key_value(block.ln1(x), rope)
    n_prefix = len(prefix) if prefix is not None else 0
    q_mask = None if mask is None else mask[..., at : at + 1, : n_prefix + at + 1]
    q_rope = None if rope is None else tuple(t[:, at : at + 1] for t in rope)
    out = block(x[:, at : at + 1], q_mask, q_rope, PrependedKV(k[:, :at], v[:, :at], prefix))
    return out, k, v
