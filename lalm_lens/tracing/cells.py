"""Cells (one patched run each) and the checks on the arguments that choose them.

Every argument is checked before any model work, with a message naming it:
a state must be a block hook with a position axis, layers and positions
non-empty, unique and in range, a window at least 1.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

from transformer_lens.utilities import get_act_name

# Block states with a position axis at dim 1 (`[batch, pos, ...]`), the ones a cell can restore.
POSITIONAL_STATES = ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "q", "k", "v", "rot_q", "rot_k",
                     "z", "result", "pre", "pre_linear", "post", "expert_out", "expert_weights")
HEAD_STATES = ("q", "k", "v", "rot_q", "rot_k", "z", "result")  # `[batch, pos, head, ...]`
# States whose hook is not TransformerLens's name for them (MoE layers only: `components/moe.py`), with the
# unit a cell's `heads` index selects on the axis after position, and the config flag that computes them.
STATE_HOOKS = {"expert_out": "blocks.{layer}.mlp.hook_expert_out", "expert_weights": "blocks.{layer}.mlp.hook_expert_weights"}
UNIT_STATES = {"expert_out": "expert", "expert_weights": "expert"}  # `[batch, pos, expert, ...]`
STATE_FLAGS = {"expert_out": "use_expert_outputs"}  # state -> cfg flag (HookedLALM.set_<flag>(True))
MODES = ("tokens", "layers")


@dataclass(frozen=True)
class Cell:
    """One patched run: restore `states` at `layers` for `positions` (and only `heads`, if given)."""

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


def state_hook(states: str, layer: int) -> str:
    """The hook a state names at `layer`."""
    return STATE_HOOKS[states].format(layer=layer) if states in STATE_HOOKS else get_act_name(states, layer)


def state_layers(model, states: str) -> list[int]:
    """The layers that have `states` (every layer, but the expert states only in MoE layers)."""
    return [l for l in range(model.cfg.n_layers) if state_hook(states, l) in model.hook_dict]


def check_state_layers(model, states: str, layers: Sequence[int], window: int) -> None:
    """Every layer a cell restores (its window included) must have the state."""
    have = state_layers(model, states)
    missing = sorted({w for l in layers for w in window_layers(l, window, model.cfg.n_layers)} - set(have))
    if missing:
        raise ValueError(f"states={states!r} exists only at layers {have}; layer(s) {missing} have none "
                         "(pass layers= among those, and a window that stays within them)")


def check_states(model, states: str) -> str:
    """`states` must name a block hook with a position axis that this model has."""
    if not isinstance(states, str) or states not in POSITIONAL_STATES:
        other = " (its axes are [batch, head, query, key]: no position axis to restore)" if states in (
            "pattern", "attn_scores") else ""
        raise ValueError(f"states={states!r} is not a restorable block state{other}; choose from "
                         f"{', '.join(s for s in POSITIONAL_STATES if state_layers(model, s))}")
    if not state_layers(model, states):
        raise ValueError(f"states={states!r}: this model has no {state_hook(states, 0)} "
                         "(e.g. `result` needs cfg.use_attn_result, `pre_linear` a gated MLP, `expert_out` a MoE layer)")
    flag = STATE_FLAGS.get(states)
    if flag and not getattr(model.cfg, flag, False):
        raise ValueError(f"states={states!r} needs model.set_{flag}(True) (it costs memory; "
                         "expert_trace sets it for its own runs)")
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
