"""Expert-level analyses for mixture-of-experts LMs (Qwen3-Omni): which experts the audio and the
text positions route to (`expert_routing_trace`), and which experts carry the answer (`expert_trace`).

    routing = expert_routing_trace(model, inp, corruption="silence")
    routing.clean_audio            # [n_moe_layers, n_experts]: mean routing weight per audio position
    routing.most_changed(5, "text")  # [(layer, expert, corrupted - clean), ...], largest |change| first
    trace = expert_trace(model, inp, answer="yes", states="expert_out", experts=[3, 17], positions=[40])
    trace.patched                  # [n_moe_layers, 2]: P(answer) with one expert restored at position 40

Routing mass of expert e at a position: the routing weight the router gave e there
(`hook_topk_weights` at the slot where `hook_topk_ids` is e; 0 when e was not chosen).
A group's map is that mass averaged over the group's positions (and over the noise
samples of a corruption that draws several), so with `norm_topk_prob` every row sums
to 1. Audio positions are the audio placeholders; text positions every other real
(unpadded) token. One item at a time, as `causal_trace`.

`expert_trace` is `causal_trace` over the MoE states `expert_out` (`[batch, pos, n_experts,
d_model]`, each expert's weighted output) and `expert_weights` (`[batch, pos, n_experts]`, each
expert's routing weight), with cells that restore one expert (the unit on the axis after
position, as heads are for `z`). `causal_trace(states="expert_out")` itself restores every expert
of a cell (the same as `mlp_out`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal, Optional, Union

import torch
from torch import Tensor

from lalm_lens.tracing.cells import Cell, check_indices, check_mode, window_layers
from lalm_lens.tracing.checks import warn_if_ill_posed
from lalm_lens.tracing.groups import non_audio_positions
from lalm_lens.tracing.interventions import Corruption, as_corruption, check_same_layout
from lalm_lens.tracing.numbers import num
from lalm_lens.tracing.results import TraceResult
from lalm_lens.tracing.pipeline import Layout, TraceSpec, finish, prepare

Group = Literal["audio", "text"]


@dataclass(frozen=True)
class ExpertRouting:
    """Layer x expert maps of routing mass, for the audio and the text positions, clean and corrupted."""

    layers: tuple[int, ...]  # the MoE layers, the rows of every map
    clean_audio: Tensor  # [len(layers), n_experts]
    clean_text: Tensor
    corrupted_audio: Tensor
    corrupted_text: Tensor
    corruption: str  # what the corrupted run was

    @property
    def n_experts(self) -> int:
        return self.clean_text.shape[-1]

    def change(self, group: Group = "text") -> Tensor:
        """Corrupted minus clean routing mass, `[len(layers), n_experts]`."""
        if group not in ("audio", "text"):
            raise ValueError(f"group must be 'audio' or 'text', got {group!r}")
        return getattr(self, f"corrupted_{group}") - getattr(self, f"clean_{group}")

    def most_changed(self, n: int = 10, group: Group = "text") -> list[tuple[int, int, float]]:
        """The `n` (layer, expert, change) whose routing mass the corruption moves most, largest |change| first."""
        delta = self.change(group)
        order = delta.abs().flatten().argsort(descending=True, stable=True)[:n]
        return [(self.layers[i // self.n_experts], i % self.n_experts, delta.flatten()[i].item()) for i in order.tolist()]


def moe_layers(model) -> tuple[int, ...]:
    """The layers whose MLP is a mixture of experts (from the config: no family branch)."""
    layers = tuple(model.cfg.moe_layers or ())
    if not layers:
        raise ValueError(f"{model.config.family} has no mixture-of-experts layer: an expert routing trace needs one "
                         "(e.g. the Qwen3-Omni thinker)")
    return layers


@torch.no_grad()
def routing_mass(model, inputs, hooks: list = ()) -> Tensor:
    """`[n_moe_layers, rows, pos, n_experts]` routing weight of every expert at every position."""
    layers = moe_layers(model)
    names = {f"blocks.{l}.mlp.hook_topk_{x}" for l in layers for x in ("ids", "weights")}
    with model.hooks(fwd_hooks=list(hooks)):
        _, cache = model.run_with_cache(inputs, names_filter=lambda name: name in names)
    maps = []
    for l in layers:
        ids, weights = cache[f"blocks.{l}.mlp.hook_topk_ids"], cache[f"blocks.{l}.mlp.hook_topk_weights"]
        mass = torch.zeros(*ids.shape[:-1], model.cfg.n_experts, dtype=torch.float32, device=ids.device)
        maps.append(mass.scatter_add_(-1, ids, weights.float()))
    return torch.stack(maps).cpu()


def expert_routing_trace(model, inp, corruption: Union[str, Corruption, None] = "silence") -> ExpertRouting:
    """Routing mass per MoE layer and expert, at the audio and at the text positions, in the clean run and
    in the corrupted one (`corruption`: as for `causal_trace`; default: silence of the same length)."""
    layers = moe_layers(model)
    corruption = as_corruption(corruption)
    run = corruption.apply(model, inp)
    check_same_layout(inp, run.inputs)
    clean = routing_mass(model, inp)[:, 0]  # [layers, pos, experts]
    corrupted = routing_mass(model, run.batch(), run.hooks()).mean(1)  # averaged over noise samples
    ids = inp["input_ids"][0].cpu()
    valid = inp["attention_mask"][0].bool().cpu() if inp.get("attention_mask") is not None else torch.ones_like(ids, dtype=torch.bool)
    audio = model.audio_token_mask(ids[None])[0].cpu() & valid
    text = valid & ~audio
    if not audio.any():
        raise ValueError("the input has no audio positions: an expert routing trace compares the audio's routing")

    def mean(mass: Tensor, where: Tensor) -> Tensor:
        return mass[:, where].mean(1)

    return ExpertRouting(layers, mean(clean, audio), mean(clean, text), mean(corrupted, audio), mean(corrupted, text),
                         run.description or type(corruption).__name__)


# ------------------------------------------------------------------ expert patching
EXPERT_STATES = ("expert_out", "expert_weights")


@dataclass
class ExpertTrace(TraceResult):
    """`patched[layer, expert]` (`expert_mode="layers"`: `positions` restored together) or
    `patched[layer, position, expert]` (`"tokens"`: one position at a time): one expert of one MoE layer
    restored in the corrupted run — its clean weighted output (`states="expert_out"`) or its clean routing
    weight (`"expert_weights"`)."""

    experts: list = field(default_factory=list)
    expert_mode: str = "layers"
    kind: ClassVar[str] = "experts"

    def expected_shape(self) -> tuple[int, ...]:
        middle = (len(self.positions),) if self.expert_mode == "tokens" else ()
        return (len(self.layers), *middle, len(self.experts))

    def _cells(self):
        """`(layer, position or None, expert, index)` of every cell."""
        for a, l in enumerate(self.layers):
            for j, e in enumerate(self.experts):
                if self.expert_mode == "tokens":
                    yield from ((l, p, e, (a, b, j)) for b, p in enumerate(self.positions))
                else:
                    yield l, None, e, (a, j)

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame([dict(layer=l, position=p, expert=e, score=float(self.patched[i]),
                                  recovery=float(self.recovery[i])) for l, p, e, i in self._cells()])

    def by_expert(self) -> Tensor:
        """Recovery `[layer, expert]` (tokens mode: the best position of each)."""
        rec = self.recovery.nan_to_num(float("-inf"))
        return rec.amax(1) if self.expert_mode == "tokens" else rec

    def top_experts(self, k: int = 5) -> list[tuple[int, int, float]]:
        """The `k` (layer, expert, recovery) whose restoration recovers most (tokens mode: at its best position)."""
        rec = self.by_expert()
        order = rec.flatten().argsort(descending=True, stable=True)[:k].tolist()
        n = rec.shape[1]
        return [(self.layers[i // n], self.experts[i % n], float(rec.flatten()[i])) for i in order]

    def summary(self) -> str:
        where = "one position at a time" if self.expert_mode == "tokens" else f"{len(self.positions)} positions together"
        lines = self.header()
        lines.append(f"restoring one expert's {self.states} at {where}: top (layer.expert RR) "
                     + ", ".join(f"{l}.{e} {num(r)}" for l, e, r in self.top_experts()))
        return "\n".join(lines)

    def numbers(self) -> dict:
        return dict(super().numbers(), experts=self.experts, expert_mode=self.expert_mode,
                    top_experts=self.top_experts())

    def plot(self, ax=None, title: Optional[str] = None, value: str = "recovery"):
        import matplotlib.pyplot as plt

        from lalm_lens.tracing.plots import _recovery_image, value_label

        data = getattr(self, value).double()
        data = data.nan_to_num(float("-inf")).amax(1) if self.expert_mode == "tokens" else data
        ax = ax or plt.subplots(figsize=(0.25 * len(self.experts) + 3.0, 0.3 * len(self.layers) + 2.0))[1]
        _recovery_image(ax, data.masked_fill(data.isinf(), float("nan")).numpy(), value, value_label(self, value))
        ax.set_xticks(range(len(self.experts)), self.experts, fontsize=6)
        ax.set_yticks(range(len(self.layers)), self.layers, fontsize=7)
        ax.set_xlabel("expert")
        ax.set_ylabel("MoE layer")
        ax.set_title(title or self.title(f"restoring one expert's {self.states}"), fontsize=8)
        return ax


def expert_trace(model, clean, corruption: Union[str, Corruption, None] = "silence", *, answer, metric=None,
                 states: str = "expert_out", experts=None, layers=None, positions=None, mode: str = "layers",
                 window: int = 1, engine="fast", min_effect: Optional[float] = None) -> ExpertTrace:
    """Which experts: a causal trace whose cells restore one expert of one MoE layer (layer × expert, or
    layer × position × expert with `mode="tokens"`).

    `states="expert_out"`: the expert's clean weighted output (`blocks.{l}.mlp.hook_expert_out`; 0 where
    the clean run did not choose it) replaces its corrupted one; `"expert_weights"`: its clean routing weight
    (`hook_expert_weights`), the expert computed on the corrupted state (added where only the clean run chose
    it, dropped where only the corrupted one did). `experts`, `layers` (MoE layers) default to all;
    `positions` to every non-audio position, as `causal_trace`. Corruption, metric, checks and engines are
    `causal_trace`'s (the fast engine is exact: routing depends only on a token's own state). `expert_out`
    turns on `model.set_use_expert_outputs(True)` for the trace's runs only. (`engine="attribution"` on
    `expert_weights` gives an expert the corrupted run did not choose no gradient, so it estimates 0 for it.)"""
    if states not in EXPERT_STATES:
        raise ValueError(f"states must be one of {EXPERT_STATES} for an expert trace, got {states!r}")
    mode = check_mode(mode)
    moe = moe_layers(model)
    experts = check_indices(experts, model.cfg.n_experts, "expert(s)", range(model.cfg.n_experts))
    old = model.cfg.use_expert_outputs
    model.set_use_expert_outputs(old or states == "expert_out")
    try:
        spec = TraceSpec(model, mode="layers", states=states, layers=moe if layers is None else layers,
                         positions=positions, window=window, corruption=corruption, metric=metric, engine=engine,
                         min_effect=min_effect)
        L = model.cfg.n_layers

        def layout(groups: list[str]) -> Layout:
            where = check_indices(spec.positions, len(groups), "position(s)", non_audio_positions(groups))
            spans = [(p,) for p in where] if mode == "tokens" else [tuple(where)]
            shape = (len(spec.layers), *([len(where)] if mode == "tokens" else []), len(experts))
            return Layout([Cell(window_layers(l, spec.window, L), span, (e,)) for l in spec.layers for span in spans
                           for e in experts], positions=where, shape=shape, result=ExpertTrace,
                          settings=dict(experts=experts, expert_mode=mode))

        prep = prepare(model, spec, clean, answer, layout)
        patched = prep.patched(model)  # inside the flag: the suffix runs need hook_expert_out
    finally:
        model.set_use_expert_outputs(old)
    result = finish(model, prep, patched, experts=experts, expert_mode=mode)
    warn_if_ill_posed(result.checks, f"the expert trace of {result.answer!r}")
    return result
