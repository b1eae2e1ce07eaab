"""The reference engine: the clean run, then one hooked forward per cell — obviously correct.

The clean states are cached by `run_with_cache`; each cell runs the corrupted
input (all noise samples as one batch) with hooks that write the clean states
back at the cell's layers and positions. Every hook the user has on the model
runs as in a plain forward.
"""

from __future__ import annotations

import torch
from torch import Tensor

from lalm_lens.tracing.cells import state_hook
from lalm_lens.tracing.engines.base import Baseline, Engine, TraceJob, lora_for, restore_index, score_of


def restore_hook(clean_cache, cell):
    pos, heads = restore_index(cell)

    def hook(act: Tensor, hook) -> Tensor:
        clean = clean_cache[hook.name]
        if heads is None:
            act[:, pos] = clean[:, pos].to(act.dtype)
        else:
            act[:, pos, heads] = clean[:, pos, heads].to(act.dtype)
        return act

    return hook


class ReferenceEngine(Engine):
    name = "reference"

    @torch.no_grad()
    def baseline(self, model, job: TraceJob) -> Baseline:
        names = set(job.state_names(model.cfg.n_layers))
        with lora_for(model, job, "clean"):
            logits, cache = model.run_with_cache(job.clean, names_filter=lambda name: name in names)
        clean = logits[:, job.final]
        with lora_for(model, job, "corrupted"):
            corrupted = model.run_with_hooks(job.corrupted.batch(), fwd_hooks=job.corrupted.hooks())[:, job.final]
        return Baseline(clean[0], corrupted, score_of(job, clean), score_of(job, corrupted), state=cache)

    @torch.no_grad()
    def patched(self, model, job: TraceJob, base: Baseline) -> Tensor:
        batch, noise = job.corrupted.batch(), job.corrupted.hooks()
        out = []
        for cell in job.cells:
            hooks = [(state_hook(job.states, layer), restore_hook(base.state, cell)) for layer in cell.layers]
            with lora_for(model, job, "corrupted"):
                logits = model.run_with_hooks(batch, fwd_hooks=noise + hooks)
            out.append(score_of(job, logits[:, job.final]))
        return torch.tensor(out, dtype=torch.float64)
