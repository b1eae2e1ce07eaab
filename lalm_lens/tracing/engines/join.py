"""Where a cell's suffix starts: after its first layer, for the states that settle that layer.

At a cell's first layer l everything before the patch is the corrupted run, and
for these states the patch changes layer l's output only at the restored
positions P, position by position (the MLP and the norms act per position):

| state        | residual leaving block l at P (elsewhere: the corrupted run's)        |
|--------------|-----------------------------------------------------------------------|
| `resid_post` | clean `resid_post[l]`                                                 |
| `resid_mid`  | clean `resid_post[l]` (clean `resid_mid` + the MLP of it)             |
| `mlp_out`    | corrupted `resid_mid[l]` + clean `mlp_out[l]`                         |
| `attn_out`   | m + MLP(ln2(m)), m = corrupted `resid_pre[l]` + clean `attn_out[l]`   |

So block l is not re-run: the suffix starts at block l + 1 from the corrupted
`resid_pre[l + 1]` with P written over (a cell at the last layer reads out the
answer position only). States that reach other positions through attention
(`resid_pre`, `q`/`k`/`v`, `z`, ...) still start at block l.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Optional

from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.utilities import get_act_name

if TYPE_CHECKING:
    from lalm_lens.interface import LALM

# state -> (clean names, corrupted names) the baseline keeps per layer for the join
NEEDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "resid_post": ((), ()),
    "resid_mid": (("resid_post",), ()),
    "mlp_out": ((), ("resid_mid",)),
    "attn_out": ((), ("resid_pre",)),
}


def _resid_post(model: "LALM", clean, corr, layer, pos, rel):
    return clean[get_act_name("resid_post", layer)][pos][None]


def _mlp_out(model: "LALM", clean, corr, layer, pos, rel):
    return corr[get_act_name("resid_mid", layer)][:, rel] + clean[get_act_name("mlp_out", layer)][pos][None]


def _attn_out(model: "LALM", clean, corr, layer, pos, rel):
    mid = corr[get_act_name("resid_pre", layer)][:, rel] + clean[get_act_name("attn_out", layer)][pos][None]
    block = model.blocks[layer]
    return mid + block.mlp(block.ln2(mid))


AFTER: dict[str, Callable] = {"resid_post": _resid_post, "resid_mid": _resid_post, "mlp_out": _mlp_out,
                              "attn_out": _attn_out}


def joins_after(states: str, model: Optional["LALM"] = None) -> bool:
    """Whether a cell restoring `states` starts after its first layer. `mlp_out` and `attn_out` rebuild the
    block's sums above, so they join after it only where every block is the plain `TransformerBlock` (a family
    whose block adds its outputs otherwise, e.g. Granite's residual multiplier, starts at block l)."""
    if states in ("mlp_out", "attn_out") and model is not None and not _plain_blocks(model):
        return False
    return states in AFTER


def _plain_blocks(model: "LALM") -> bool:
    from lalm_lens.components.block import TransformerBlock

    return all(type(block).forward is TransformerBlock.forward for block in model.blocks)


def kept_names(states: str, n_layers: int) -> tuple[set[str], set[str]]:
    """The extra (clean, corrupted) activations the baseline keeps for `states`' joins."""
    clean, corr = NEEDS.get(states, ((), ()))
    return ({get_act_name(s, layer) for s in clean for layer in range(n_layers)},
            {get_act_name(s, layer) for s in corr for layer in range(n_layers)})


def block_output(model: "LALM", states: str, clean: dict, corr: dict, first: int, layer: int,
                 positions: Int[Tensor, "n"], n_runs: int) -> Float[Tensor, "n_runs n d_model"]:
    """`[n_runs, len(positions), d_model]`: the residual leaving block `layer` at the restored `positions`
    when the cell's first patch is there. `clean[name]` is `[T, ...]`, `corr[name]` `[n_runs, T - first, ...]`."""
    out = AFTER[states](model, clean, corr, layer, positions, positions - first)
    return out.expand(n_runs, -1, -1)
