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
                     "z", "result", "pre", "pre_linear", "post")
HEAD_STATES = ("q", "k", "v", "rot_q", "rot_k", "z", "result")  # `[batch, pos, head, ...]`
MODES = ("tokens", "layers")

if TYPE_CHECKING:
    from lalm_lens.model import HookedLALM


@dataclass(frozen=True)
class State:
    """What a cell restores, declared once: the hook it names at each layer, and what the axis after
    position is (`units`: "head" for the per-head states; None: no such axis). A cell's `heads` index
    that axis, so a new kind of cell (an SAE's features, an MoE layer's experts) is a new `State` —
    its hook and its unit axis — not a branch in the engines."""

    name: str
    units: Optional[str] = None

    def hook(self, layer: int) -> str:
        """The hook point this state names at `layer`."""
        return get_act_name(self.name, layer)

    def hooks(self, n_layers: int) -> list[str]:
        return [self.hook(layer) for layer in range(n_layers)]


def state_of(states: str) -> State:
    """The declared `State` of a block state's name (`check_states` has checked it)."""
    return State(states, "head" if states in HEAD_STATES else None)


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


def check_states(model: "HookedLALM", states: str) -> str:
    """`states` must name a block hook with a position axis that this model has."""
    if not isinstance(states, str) or states not in POSITIONAL_STATES:
        other = " (its axes are [batch, head, query, key]: no position axis to restore)" if states in (
            "pattern", "attn_scores") else ""
        raise ValueError(f"states={states!r} is not a restorable block state{other}; choose from "
                         f"{', '.join(s for s in POSITIONAL_STATES if get_act_name(s, 0) in model.hook_dict)}")
    if get_act_name(states, 0) not in model.hook_dict:
        raise ValueError(f"states={states!r}: this model has no {get_act_name(states, 0)} "
                         "(e.g. `result` needs cfg.use_attn_result, `pre_linear` a gated MLP)")
    return states


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
