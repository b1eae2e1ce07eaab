"""Steering and unit interventions as values: each gives the forward hooks it needs.

    model.run_with_hooks(inp, fwd_hooks=AddDirection("blocks.1.hook_resid_post", d, 4.0).hooks(model, inp))
    model.generate(inp, interventions=[AblateHead(0, 2), ClampFeature(sae, 17, 5.0)])

`positions` ("all", "audio", or a list of prompt positions) act on the
position axis (axis 1) of a full-sequence run; a cached decoding step (a
shorter sequence than the prompt) only gets "all", since the later tokens are
at no listed or audio position. `audio_direction` and `head_audio_attention`
find what to steer: the audio-minus-silence direction and audio-specialist heads.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence, Union

import torch
from torch import Tensor

from lalm_lens.features.sae import SAE

Hook = tuple[str, Callable]
Positions = Union[str, Sequence[int]]


def _prompt_ids(model, inp) -> Optional[Tensor]:
    return None if inp is None else model.model_inputs(inp)["input_ids"]


def position_mask(model, positions: Positions, inp=None) -> Callable[[Tensor], Optional[Tensor]]:
    """A function from an activation `[batch, pos, ...]` to a `[batch, pos]` mask (None: every position)."""
    if isinstance(positions, str) and positions == "all":
        return lambda x: None
    ids = _prompt_ids(model, inp)
    if isinstance(positions, str):
        if positions != "audio":
            raise ValueError(f"positions={positions!r}: use 'all', 'audio' or a list of prompt positions")
        if ids is None:
            raise ValueError("positions='audio' needs the input: call .hooks(model, inp)")
        prompt = model.audio_token_mask(ids)
    else:
        wanted = [int(p) for p in positions]
        if not wanted:
            raise ValueError("positions=[]: name at least one position (or use 'all')")
        length = ids.shape[1] if ids is not None else max(wanted) + 1
        if max(wanted) >= length:
            raise ValueError(f"positions={wanted}: the prompt has {length} positions")
        prompt = torch.zeros(1, length, dtype=torch.bool)
        prompt[:, wanted] = True

    def mask(x: Tensor) -> Optional[Tensor]:
        if x.shape[1] < prompt.shape[1]:  # a cached decoding step: no listed position
            return torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
        full = torch.zeros(x.shape[:2], dtype=torch.bool, device=x.device)
        full[:, : prompt.shape[1]] = prompt.to(x.device)
        return full

    return mask


def _where(mask: Optional[Tensor], new: Tensor, old: Tensor) -> Tensor:
    if mask is None:
        return new
    return torch.where(mask.reshape(*mask.shape, *[1] * (old.ndim - 2)), new, old)


@dataclass(frozen=True, eq=False)
class AddDirection:
    """Add `alpha · direction` at `hook` (at `positions`): steering."""

    hook: str
    direction: Tensor
    alpha: float = 1.0
    positions: Positions = "all"

    def hooks(self, model, inp=None) -> list[Hook]:
        if self.hook not in model.hook_dict:
            raise ValueError(f"AddDirection(hook={self.hook!r}): no such hook point; see model.hook_dict")
        mask = position_mask(model, self.positions, inp)

        def add(x, hook):
            step = (self.alpha * self.direction).to(x.device, x.dtype)
            return _where(mask(x), x + step, x)

        return [(self.hook, add)]


@dataclass(frozen=True)
class AblateHead:
    """A head's output (`hook_z`): zeroed, replaced by its mean over the run's positions, or scaled by `scale`."""

    layer: int
    head: int
    mode: str = "zero"  # "zero" | "mean" | "scale"
    scale: float = 0.0
    positions: Positions = "all"

    def hooks(self, model, inp=None) -> list[Hook]:
        _check_unit(model, "AblateHead", self.layer, self.head, model.cfg.n_heads, "head", self.mode)
        mask = position_mask(model, self.positions, inp)

        def ablate(z, hook):
            z = z.clone()
            z[:, :, self.head] = _where(mask(z), _edit(z[:, :, self.head], self.mode, self.scale), z[:, :, self.head])
            return z

        return [(f"blocks.{self.layer}.attn.hook_z", ablate)]


@dataclass(frozen=True)
class ScaleNeuron:
    """An MLP neuron (`mlp.hook_post`): ×k, or its mean over the run's positions (`mode="mean"`)."""

    layer: int
    neuron: int
    k: float = 0.0
    mode: str = "scale"  # "scale" | "mean" | "zero"
    positions: Positions = "all"

    def hooks(self, model, inp=None) -> list[Hook]:
        d_mlp = model.blocks[self.layer].mlp.W_out.shape[0] if 0 <= self.layer < model.cfg.n_layers else 0
        _check_unit(model, "ScaleNeuron", self.layer, self.neuron, d_mlp, "neuron", self.mode)
        mask = position_mask(model, self.positions, inp)

        def scale(post, hook):
            post = post.clone()
            post[..., self.neuron] = _where(mask(post), _edit(post[..., self.neuron], self.mode, self.k), post[..., self.neuron])
            return post

        return [(f"blocks.{self.layer}.mlp.hook_post", scale)]


@dataclass(frozen=True, eq=False)
class ClampFeature:
    """Set an SAE feature to `value` (the SAE must be spliced: `model.add_sae(sae)`)."""

    sae: SAE
    feature: int
    value: float
    positions: Positions = "all"

    def hooks(self, model, inp=None) -> list[Hook]:
        if not 0 <= self.feature < self.sae.cfg.d_sae:
            raise ValueError(f"ClampFeature(feature={self.feature}): the SAE has d_sae={self.sae.cfg.d_sae} features")
        where = model.sae_hook(self.sae)
        mask = position_mask(model, self.positions, inp)

        def clamp(acts, hook):
            acts = acts.clone()
            acts[..., self.feature] = _where(mask(acts), torch.full_like(acts[..., self.feature], self.value),
                                             acts[..., self.feature])
            return acts

        return [(f"{where}.hook_sae_acts_post", clamp)]


MODES = ("zero", "mean", "scale")


def _check_unit(model, what: str, layer: int, unit: int, n: int, noun: str, mode: str) -> None:
    if not 0 <= layer < model.cfg.n_layers:
        raise ValueError(f"{what}(layer={layer}): the model has layers 0..{model.cfg.n_layers - 1}")
    if not 0 <= unit < n:
        raise ValueError(f"{what}({noun}={unit}): layer {layer} has {noun}s 0..{n - 1}")
    if mode not in MODES:
        raise ValueError(f"{what}(mode={mode!r}): use one of {MODES}")


def _edit(x: Tensor, mode: str, k: float) -> Tensor:
    """x [batch, pos, ...]: zero, the mean over batch and positions, or ×k."""
    if mode == "zero":
        return torch.zeros_like(x)
    if mode == "mean":
        return x.mean(dim=(0, 1), keepdim=True).expand_as(x)
    return x * k


def intervention_hooks(model, interventions: Iterable, inp=None) -> list[Hook]:
    """Every hook of `interventions`, in order (for `run_with_hooks` or `model.hooks`)."""
    return [h for iv in interventions for h in iv.hooks(model, inp)]


# ---------------------------------------------------------------------- finding what to steer
@torch.no_grad()
def audio_direction(model, items: Iterable, layer: int, corruption=None) -> Tensor:
    """Mean over items and positions of resid_post(clean) − resid_post(silence) at `layer` ([d_model])."""
    from lalm_lens.tracing.interventions import Silence

    corruption = corruption or Silence()
    name = f"blocks.{layer}.hook_resid_post"
    if not 0 <= layer < model.cfg.n_layers:
        raise ValueError(f"audio_direction(layer={layer}): the model has layers 0..{model.cfg.n_layers - 1}")
    total, n = None, 0
    for inp in items:
        run = corruption.apply(model, inp)
        clean = model.run_with_cache(inp, names_filter=name)[1][name]
        with model.hooks(fwd_hooks=run.hooks()):
            corrupt = model.run_with_cache(run.batch(), names_filter=name)[1][name]
        valid = model.model_inputs(inp).get("attention_mask", torch.ones(clean.shape[:2]))
        diff = ((clean - corrupt) * valid[..., None]).sum(dim=(0, 1)) / valid.sum()
        total, n = (diff if total is None else total + diff), n + 1
    if n == 0:
        raise ValueError("audio_direction(items=...): no items")
    return total / n


@torch.no_grad()
def head_audio_attention(model, inp) -> Tensor:
    """[n_layers, n_heads]: each head's attention mass on the audio positions, averaged over the
    query positions after the audio (the text that reads it) and the batch."""
    ids = model.model_inputs(inp)["input_ids"]
    audio = model.audio_token_mask(ids)
    if not audio.any():
        raise ValueError("head_audio_attention(inp=...): the input has no audio positions")
    after = torch.arange(ids.shape[1])[None] > audio.float().cumsum(-1).argmax(-1, keepdim=True)
    names = [f"blocks.{l}.attn.hook_pattern" for l in range(model.cfg.n_layers)]
    _, cache = model.run_with_cache(inp, names_filter=lambda n: n in names)
    out = []
    for name in names:
        mass = (cache[name] * audio[:, None, None].to(cache[name].dtype)).sum(-1)  # [batch, head, query]
        out.append((mass * after[:, None]).sum(dim=(0, 2)) / after.sum())
    return torch.stack(out)


@torch.no_grad()
def steering_effect(model, items: Iterable, interventions: Sequence, n_boot: int = 1000, seed: int = 0) -> dict:
    """Accuracy (top-1 at the final position == the answer) without and with `interventions` over a
    dataset, and the change with a paired percentile-bootstrap 95% CI. `items`: `(inp, answer)`
    pairs, or prepared inputs with `meta["answer"]`."""
    import numpy as np

    from lalm_lens.tracing.dataset_result import bootstrap_ci
    from lalm_lens.tracing.groups import final_position
    from lalm_lens.tracing.pipeline import answer_token

    base, steered = [], []
    for item in items:
        inp, answer = item if isinstance(item, tuple) else (item, (getattr(item, "meta", None) or {}).get("answer"))
        if answer is None:
            raise ValueError("steering_effect(items=...): give (inp, answer) pairs or inputs with meta['answer']")
        token, _ = answer_token(model, inp, answer)
        at = final_position(model.model_inputs(inp))
        base.append(float(int(model(inp)[0, at].argmax()) == token))
        hooked = model.run_with_hooks(inp, fwd_hooks=intervention_hooks(model, interventions, inp))
        steered.append(float(int(hooked[0, at].argmax()) == token))
    if not base:
        raise ValueError("steering_effect(items=...): no items")
    delta, lo, hi = bootstrap_ci(np.array(steered) - np.array(base), n_boot=n_boot, seed=seed)
    return {"n": len(base), "accuracy": float(np.mean(base)), "steered_accuracy": float(np.mean(steered)),
            "delta": float(delta), "delta_ci": (float(lo), float(hi))}
