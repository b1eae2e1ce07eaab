"""The reference engine: the clean run, then one hooked forward per cell — obviously correct.

The clean states are cached by `run_with_cache`; each cell runs the corrupted
input (all noise samples as one batch) with hooks that write the clean states
back at the cell's layers and positions (`restoring`). Every hook the user has
on the model runs as in a plain forward.
"""

from __future__ import annotations

from contextlib import ExitStack
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens import ActivationCache

from lalm_lens.tracing.cells import Cell
from lalm_lens.tracing.engines.base import Baseline, Engine, HookFn, TraceJob, lora_for, restore_index, restoring, score_of

if TYPE_CHECKING:
    from lalm_lens.interface import LALM


@dataclass
class ReferenceBaseline(Baseline):
    """The baseline and the clean run's traced states (every layer's, `[1, pos, ...]` each)."""

    cache: ActivationCache = None


def restore_hook(clean_cache: ActivationCache, cell: Cell) -> HookFn:
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
    def baseline(self, model: "LALM", job: TraceJob) -> ReferenceBaseline:
        names = set(job.state_names(model.cfg.n_layers))
        with lora_for(model, job, "clean"):
            logits, cache = model.run_with_cache(job.clean, names_filter=lambda name: name in names)
        clean = logits[:, job.final]
        with lora_for(model, job, "corrupted"):
            corrupted = model.run_with_hooks(job.corrupted.batch(), fwd_hooks=job.corrupted.hooks())[:, job.final]
        return ReferenceBaseline(clean[0], corrupted, score_of(job, clean), score_of(job, corrupted), cache=cache)

    @torch.no_grad()
    def patched(self, model: "LALM", job: TraceJob, base: ReferenceBaseline) -> Float[Tensor, "n_cells"]:
        batch, noise = job.corrupted.batch(), job.corrupted.hooks()
        out = []
        for cell in job.cells:
            with ExitStack() as restores, lora_for(model, job, "corrupted"):
                for layer in cell.layers:
                    restores.enter_context(restoring(model, job.state.hook(layer), restore_hook(base.cache, cell)))
                logits = model.run_with_hooks(batch, fwd_hooks=noise)
            out.append(score_of(job, logits[:, job.final]))
        return torch.tensor(out, dtype=torch.float64)
