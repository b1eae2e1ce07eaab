"""Cells (one patched run each) and the checks on the arguments that choose them.

Every argument is checked before any model work, with a message naming it:
a state must be a block hook with a position axis, layers and positions
non-empty, unique and in range, a window at least 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence

from transformer_lens.utilities import get_act_name

# Block states with a position axis at dim 1 (`[batch, pos, ...]`), the ones a cell can restore.
POSITIONAL_STATES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "q", "k", "v", "rot_q", "rot_k",
                     "z", "result", "pre", "pre_linear", "post", "expert_out", "expert_weights")
HEAD_STATES = ("q", "k", "v", "rot_q", "rot_k", "z", "result")  # `[batch, pos, head, ...]`
MODES = ("tokens", "layers")

if TYPE_CHECKING:
    from lalm_lens.interface import LALM


@dataclass(frozen=True)
class State:
    """What a cell restores, declared once: the hook it names at each layer, and what the axis after
    position is (`units`: "head" for the per-head states; None: no such axis). A cell's `heads` index
    that axis, so a new kind of cell (an SAE's features, an MoE layer's experts) is a new `State` —
    its hook and its unit axis — not a branch in the engines."""

    name: str
    units: Optional[str] = None
    where: Optional[str] = None  # its hook's name, "{layer}" for the layer (None: TransformerLens's name)
    flag: Optional[str] = None  # the cfg flag without which its hook never fires (`model.set_<flag>(True)`)

    def hook(self, layer: int) -> str:
        """The hook point this state names at `layer`."""
        return get_act_name(self.name, layer) if self.where is None else self.where.format(layer=layer)

    def layers(self, model: "LALM") -> list[int]:
        """The layers that have this state (every layer; the expert states only the MoE layers)."""
        return [layer for layer in range(model.cfg.n_layers) if self.hook(layer) in model.hook_dict]

    def hooks(self, n_layers: int) -> list[str]:
        return [self.hook(layer) for layer in range(n_layers)]


# The states declared beyond TransformerLens's names: a flag their hook needs, an MoE layer's experts.
DECLARED = {"result": State("result", "head", flag="use_attn_result"),
            "expert_out": State("expert_out", "expert", "blocks.{layer}.mlp.hook_expert_out", "use_expert_outputs"),
            "expert_weights": State("expert_weights", "expert", "blocks.{layer}.mlp.hook_expert_weights")}


def state_of(states: str) -> State:
    """The declared `State` of a block state's name (`check_states` has checked it)."""
    return DECLARED.get(states) or State(states, "head" if states in HEAD_STATES else None)


@dataclass(frozen=True)
class Cell:
    """One patched run: restore the state at `layers` for `positions` (and only `heads`, if given: the
    indices along the state's unit axis, `State.units`)."""

    layers: tuple[int, ...]
    positions: tuple[int, ...]
    heads: Optional[tuple[int, ...]] = None


def window_layers(layer: int, window: int, n_layers: int) -> tuple[int, ...]:
    """ROME's window: layers `[l - w//2, l + ceil(w/2))`, clipped at the ends."""
    return tuple(range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2))))


def build_cells(mode: str, layers: Sequence[int], positions: Sequence[int], window: int, n_layers: int) -> list[Cell]:
    if mode == "tokens":
        return [Cell(window_layers(l, window, n_layers), (p,)) for l in layers for p in positions]
    return [Cell(window_layers(l, window, n_layers), tuple(positions)) for l in layers]


def check_states(model: "LALM", states: str) -> str:
    """`states` must name a block hook with a position axis that this model has."""
    if not isinstance(states, str) or states not in POSITIONAL_STATES:
        other = " (its axes are [batch, head, query, key]: no position axis to restore)" if states in (
            "pattern", "attn_scores") else ""
        raise ValueError(f"states={states!r} is not a restorable block state{other}; choose from "
                         f"{', '.join(s for s in POSITIONAL_STATES if state_of(s).layers(model))}")
    state = state_of(states)
    if not state.layers(model):
        raise ValueError(f"states={states!r}: this model has no {state.hook(0)} "
                         "(e.g. `pre_linear` needs a gated MLP, `expert_out` an MoE layer)")
    if state.flag and not getattr(model.cfg, state.flag, False):  # its hook would never fire: no restore at all
        raise ValueError(f"states={states!r} needs model.set_{state.flag}(True): without it the model never "
                         f"computes {state.hook(0).split('.')[-1]}, and every cell would score as the corrupted run")
    return states


def check_state_layers(model: "LALM", states: str, layers: Sequence[int], window: int) -> None:
    """Every layer a cell restores (its window included) must have the state."""
    have = state_of(states).layers(model)
    missing = sorted({w for l in layers for w in window_layers(l, window, model.cfg.n_layers)} - set(have))
    if missing:
        raise ValueError(f"states={states!r} exists only at layers {have}; layer(s) {missing} have none "
                         "(pass layers= among those, and a window that stays within them)")


def check_indices(values: Optional[Sequence[int]], n: Optional[int], what: str, default: Sequence[int]) -> list[int]:
    """Non-empty, unique integers in `0..n-1` (`n=None`: any >= 0; `default` when None)."""
    if values is None:
        values = list(default)
    if isinstance(values, (str, bytes)) or not hasattr(values, "__iter__"):
        raise TypeError(f"{what} must be a list of integers, got {values!r}")
    values = list(values)
    if not values:
        raise ValueError(f"{what} is empty: give at least one, or None for all")
    out = []
    for v in values:
        if isinstance(v, bool) or not hasattr(v, "__index__"):
            raise TypeError(f"{what} must be integers, got {v!r}")
        out.append(int(v.__index__()))
    bad = [v for v in out if v < 0 or (n is not None and v >= n)]
    if bad:
        raise ValueError(f"{what} {bad} outside the valid range 0..{'' if n is None else n - 1}")
    dup = sorted({v for v in out if out.count(v) > 1})
    if dup:
        raise ValueError(f"{what} {dup} given more than once")
    return out


def check_window(window) -> int:
    if isinstance(window, bool) or not isinstance(window, int) or window < 1:
        raise ValueError(f"window must be an integer >= 1 (1: only the layer itself), got {window!r}")
    return window


def check_mode(mode: str) -> str:
    if mode not in MODES:
        raise ValueError(f"mode must be 'tokens' or 'layers', got {mode!r}")
    return mode
