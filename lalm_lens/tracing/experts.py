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
from typing import Literal, Union

import torch
from torch import Tensor

from lalm_lens.tracing.interventions import Corruption, as_corruption, check_same_layout

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
