"""Attribution patching: the first-order estimate of every cell from one forward and one backward.

m_patched(cell) ≈ m_corrupted + Σ_{layers, positions of the cell} (h_clean − h_corrupted) · ∂m/∂h,
the gradient taken on the corrupted run (averaged over noise samples). Cheap
and approximate: compare with the exact engines before trusting a map.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from jaxtyping import Float
from torch import Tensor

from lalm_lens.tracing.engines.base import TraceJob, lora_for, restore_index
from lalm_lens.tracing.engines.reference import ReferenceBaseline, ReferenceEngine

if TYPE_CHECKING:
    from lalm_lens.interface import LALM


class AttributionEngine(ReferenceEngine):
    name = "attribution"

    def patched(self, model: "LALM", job: TraceJob, base: ReferenceBaseline) -> Float[Tensor, "n_cells"]:
        names = [n for n in job.state_names(model.cfg.n_layers) if n in model.hook_dict]  # (expert states: MoE layers)
        acts = {}

        def track(act, hook):
            return act if act.requires_grad else act.detach().requires_grad_()  # parameters frozen: start here

        def keep(act, hook):
            acts[hook.name] = act
            return act

        hooks = job.corrupted.hooks() + [("hook_embed", track)] + [(name, keep) for name in names]
        with torch.enable_grad(), lora_for(model, job, "corrupted"):
            logits = model.run_with_hooks(job.corrupted.batch(), fwd_hooks=hooks)
            score = job.score(logits[:, job.final]).mean()
            grads = torch.autograd.grad(score, [acts[name] for name in names])
        clean = base.cache
        # contribution of each restored entry: Σ_runs (clean − corrupted) · grad over the state's feature axes
        deltas = {name: ((clean[name][:1].to(g.dtype) - acts[name].detach()) * g).sum(0) for name, g in zip(names, grads)}
        out = []
        for cell in job.cells:
            pos, heads = restore_index(cell)
            total = 0.0
            for layer in cell.layers:
                d = deltas[job.state.hook(layer)]
                d = d[pos] if heads is None else d[pos, heads]
                total += d.double().sum().item()
            out.append(base.corrupted_score + total)  # the gradient of the mean already weighs each run 1/n
        return torch.tensor(out, dtype=torch.float64)
