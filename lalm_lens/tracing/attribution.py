"""Attribution patching: the first-order estimate of every cell from one forward and one backward.

P_patched(cell) ≈ P_corrupted + Σ_{layers, positions of the cell} (h_clean − h_corrupted) · ∂P/∂h,
the gradient taken on the corrupted run (averaged over noise samples). Cheap
and approximate: compare with the exact engines before trusting a map.
"""

from __future__ import annotations

import torch
from transformer_lens.utilities import get_act_name

from lalm_lens.tracing.corruption import repeat_inputs
from lalm_lens.tracing.engines import answer_prob, clean_run


def attribution_engine(model, clean, corr, *, states, cells, answer, final, **_):
    p_clean, clean_cache = clean_run(model, clean, states, answer, final)
    n = model.cfg.n_layers
    names = [get_act_name(states, l) for l in range(n)]
    inputs = repeat_inputs(corr.inputs, corr.n_runs)
    if corr.noise is not None:
        clean_audio = clean_cache["hook_audio_embeds"]
        inputs = {k: v for k, v in inputs.items() if k not in ("input_features", "feature_attention_mask")}
        inputs["audio_embeds"] = clean_audio.repeat(corr.n_runs, 1) + corr.noise.reshape(-1, clean_audio.shape[-1])
    acts = {}

    def track(act, hook):
        if not act.requires_grad:  # parameters frozen: start the graph here
            act = act.detach().requires_grad_()
        return act

    def keep(act, hook):
        acts[hook.name] = act
        return act

    with torch.enable_grad():
        logits = model.run_with_hooks(inputs, fwd_hooks=[("hook_embed", track)] + [(name, keep) for name in names])
        p = answer_prob(logits, final, answer)
        grads = torch.autograd.grad(p.mean(), [acts[name] for name in names])
    # contribution[l, pos] = Σ_runs (clean − corrupted) · grad, summed over the state's feature axes
    contribution = torch.stack([
        ((clean_cache[name][:1].to(g.dtype) - acts[name].detach()) * g).flatten(2).sum(-1).sum(0)
        for name, g in zip(names, grads)
    ]).double().cpu()
    p_corrupted = p.detach().mean().item()
    estimate = [p_corrupted + contribution[list(c.layers)][:, list(c.positions)].sum().item() for c in cells]
    return p_clean, p_corrupted, torch.tensor(estimate, dtype=torch.float64)
