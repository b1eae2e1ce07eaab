"""Ways to compute the clean, corrupted and patched probabilities for a list of cells.

Every engine takes `(model, clean, corruption, states, cells, answer, final)`
and returns `(p_clean, p_corrupted, p_patched[n_cells])`.
`reference`: the clean run, then one hooked forward pass per cell (the noise
samples of a cell run as one batch) — the straightforward, obviously-correct
path. `fast`: see `fast_engine.py`. `attribution`: the gradient approximation
(`attribution.py`).
"""

from __future__ import annotations

import torch
from torch import Tensor
from transformer_lens.utilities import get_act_name

from lalm_lens.tracing.corruption import noise_hooks, repeat_inputs


def answer_prob(logits: Tensor, final: int, answer: int) -> Tensor:
    """P(answer) at `final` for every row, softmax over the full vocabulary in float32."""
    return logits[:, final].float().softmax(-1)[:, answer]


@torch.no_grad()
def clean_run(model, clean, states: str, answer: int, final: int):
    """P(answer) of the clean input and its cache of `states` at every layer (+ the audio vectors)."""
    names = {get_act_name(states, l) for l in range(model.cfg.n_layers)} | {"hook_audio_embeds"}
    logits, cache = model.run_with_cache(clean, names_filter=lambda name: name in names)
    return answer_prob(logits, final, answer)[0].item(), cache


def restore_hook(clean_cache, positions):
    idx = list(positions)

    def hook(act: Tensor, hook) -> Tensor:
        act[:, idx] = clean_cache[hook.name][:, idx].to(act.dtype)
        return act

    return hook


@torch.no_grad()
def reference_engine(model, clean, corr, *, states, cells, answer, final, **_) -> tuple[float, float, Tensor]:
    p_clean, clean_cache = clean_run(model, clean, states, answer, final)
    inputs = repeat_inputs(corr.inputs, corr.n_runs)
    base = noise_hooks(corr.noise)

    def score(hooks) -> float:
        logits = model.run_with_hooks(inputs, fwd_hooks=base + hooks)
        return answer_prob(logits, final, answer).mean().item()

    p_corrupted = score([])
    p_patched = [
        score([(get_act_name(states, layer), restore_hook(clean_cache, cell.positions)) for layer in cell.layers])
        for cell in cells
    ]
    return p_clean, p_corrupted, torch.tensor(p_patched, dtype=torch.float64)


def _registry() -> dict:
    from lalm_lens.tracing.attribution import attribution_engine
    from lalm_lens.tracing.fast_engine import fast_engine

    return {"reference": reference_engine, "fast": fast_engine, "attribution": attribution_engine}


ENGINES = _registry()
