"""Expert routing trace for mixture-of-experts LMs (Qwen3-Omni): which experts the audio and the
text positions route to, clean vs corrupted.

    routing = expert_routing_trace(model, inp, corruption="silence")
    routing.clean_audio            # [n_moe_layers, n_experts]: mean routing weight per audio position
    routing.most_changed(5, "text")  # [(layer, expert, corrupted - clean), ...], largest |change| first

Routing mass of expert e at a position: the routing weight the router gave e there
(`hook_topk_weights` at the slot where `hook_topk_ids` is e; 0 when e was not chosen).
A group's map is that mass averaged over the group's positions (and over the noise
samples of a corruption that draws several), so with `norm_topk_prob` every row sums
to 1. Audio positions are the audio placeholders; text positions every other real
(unpadded) token. One item at a time, as `causal_trace`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Union

import torch
from torch import Tensor

from lalm_lens.tracing.interventions import Corruption, as_corruption, check_same_layout

if TYPE_CHECKING:
    from lalm_lens.model import HookedLALM

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


def moe_layers(model: "HookedLALM") -> tuple[int, ...]:
    """The layers whose MLP is a mixture of experts (from the config: no family branch)."""
    layers = tuple(model.cfg.moe_layers or ())
    if not layers:
        raise ValueError(f"{model.config.family} has no mixture-of-experts layer: an expert routing trace needs one "
                         "(e.g. the Qwen3-Omni thinker)")
    return layers


@torch.no_grad()
def routing_mass(model: "HookedLALM", inputs, hooks: list = ()) -> Tensor:
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


def expert_routing_trace(model: "HookedLALM", inp, corruption: Union[str, Corruption, None] = "silence") -> ExpertRouting:
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
KINDS = ("output", "routing")


@dataclass(frozen=True)
class ExpertPatch:
    """`patched[i, j]`: P(answer) of the corrupted run with expert `experts[j]` of layer `layers[i]` restored
    at `positions` (its clean weighted output, or its clean routing weight; see `expert_patch_trace`)."""

    layers: tuple[int, ...]
    experts: tuple[int, ...]
    positions: tuple[int, ...]
    kind: str
    answer: int
    p_clean: float
    p_corrupted: float
    patched: Tensor  # [len(layers), len(experts)]

    @property
    def recovery(self) -> Tensor:
        """(patched - corrupted) / (clean - corrupted), per cell."""
        return (self.patched - self.p_corrupted) / (self.p_clean - self.p_corrupted)


def _expert_share(ids: Tensor, weights: Tensor, expert: int) -> Tensor:
    """`[rows, pos]` routing weight of `expert` (0 where it was not chosen)."""
    return (weights.float() * (ids == expert)).sum(-1)


def _answer_prob(logits: Tensor, answer: int) -> float:
    return logits[:, -1].float().softmax(-1)[:, answer].mean().item()


@torch.no_grad()
def expert_patch_trace(model: "HookedLALM", inp, answer: int, layers=None, experts=None, positions=None, kind: str = "output",
                       corruption: Union[str, Corruption, None] = "silence") -> ExpertPatch:
    """Restore one expert at a time, at one MoE layer at a time, at `positions` (default: all), in the corrupted run.

    kind="output": its clean contribution replaces its corrupted one at `blocks.{l}.hook_mlp_out`
    (clean routing weight × clean expert output, 0 where it was not chosen);
    kind="routing": its routing weight is set to the clean one (an extra routing slot carries the
    difference), the expert still computed on the corrupted state.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    all_layers = moe_layers(model)
    layers = tuple(all_layers if layers is None else layers)
    if set(layers) - set(all_layers):
        raise ValueError(f"layers {sorted(set(layers) - set(all_layers))} are not MoE layers; these are: {all_layers}")
    experts = tuple(range(model.cfg.n_experts) if experts is None else experts)
    if any(not 0 <= e < model.cfg.n_experts for e in experts):
        raise ValueError(f"experts must lie in 0..{model.cfg.n_experts - 1}, got {list(experts)}")
    n_pos = inp["input_ids"].shape[1]
    positions = tuple(range(n_pos) if positions is None else positions)
    if any(not 0 <= p < n_pos for p in positions):
        raise ValueError(f"positions must lie in 0..{n_pos - 1}, got {list(positions)}")
    run = as_corruption(corruption).apply(model, inp)
    check_same_layout(inp, run.inputs)
    corrupted_inputs, noise = run.batch(), run.hooks()
    names = {f"blocks.{l}.mlp.hook_{x}" for l in layers for x in ("topk_ids", "topk_weights", "expert_out")}
    keep = lambda name: name in names  # noqa: E731
    old = model.cfg.use_expert_outputs
    model.set_use_expert_outputs(True)
    try:
        clean_logits, clean = model.run_with_cache(inp, names_filter=keep)
        with model.hooks(fwd_hooks=noise):
            corrupted_logits, corrupted = model.run_with_cache(corrupted_inputs, names_filter=keep)
    finally:
        model.set_use_expert_outputs(old)
    where = torch.zeros(n_pos, dtype=torch.bool, device=model.device)
    where[list(positions)] = True
    patched = torch.zeros(len(layers), len(experts))
    for i, l in enumerate(layers):
        mlp = f"blocks.{l}.mlp."
        for j, e in enumerate(experts):
            if kind == "output":
                def contribution(cache):
                    chosen = (cache[mlp + "hook_topk_ids"] == e).unsqueeze(-1)
                    return (cache[mlp + "hook_expert_out"] * chosen).sum(-2)  # [rows, pos, d_model]

                delta = (contribution(clean) - contribution(corrupted)) * where[:, None]
                hooks = [(f"blocks.{l}.hook_mlp_out", lambda x, hook, delta=delta: x + delta.to(x.dtype))]
            else:
                share = _expert_share(clean[mlp + "hook_topk_ids"], clean[mlp + "hook_topk_weights"], e)
                share = share - _expert_share(corrupted[mlp + "hook_topk_ids"], corrupted[mlp + "hook_topk_weights"], e)
                share = share * where

                def add_slot_id(ids, hook, e=e):
                    return torch.cat([ids, torch.full_like(ids[..., :1], e)], -1)

                def add_slot_weight(w, hook, share=share):
                    return torch.cat([w, share[..., None].to(w.dtype)], -1)

                hooks = [(mlp + "hook_topk_ids", add_slot_id), (mlp + "hook_topk_weights", add_slot_weight)]
            with model.hooks(fwd_hooks=noise + hooks):
                patched[i, j] = _answer_prob(model(corrupted_inputs), answer)
    return ExpertPatch(layers, experts, positions, kind, answer, _answer_prob(clean_logits, answer),
                       _answer_prob(corrupted_logits, answer), patched)
