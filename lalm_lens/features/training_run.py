"""`train_sae`: activations over items → a TopK SAE in sparsify's format → a report of how good it is.

Items are split in order: the last `holdout` fraction (at least one item) is
held out. On the held-out activations the report gives L0 (mean active
latents per row), FVU (fraction of variance unexplained, Σ‖x − x̂‖² / Σ‖x − x̄‖²,
also for the initial SAE) and dead latents (never active there). On the
held-out items it splices the SAE without its error term and gives the change
of P(answer) and of the next-token loss at the final position (whose next
token is the answer, so the loss is −log P(answer)) and the KL divergence
there, each a mean over items.

    out/<hook>/cfg.json, sae.safetensors   (sparsify: one folder per hook point)
    out/report.json                        (the numbers and the settings)
    out/activations/                       (the bounded store, shards + store.json)

With `hook_out` it trains a transcoder (reads `hook`, predicts `hook_out` at the same positions): FVU is
then of `hook_out`'s activations, and the splice replaces `hook_out` by the prediction.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Union

import torch

from lalm_lens.features.sae import SAE
from lalm_lens.features.store import check_hook, check_positions, collect_activations
from lalm_lens.features.train import as_sae, fit_coder, new_coder


@torch.no_grad()
def reconstruction_stats(sae: SAE, x: torch.Tensor, y: torch.Tensor | None = None) -> dict:
    """L0, FVU and dead latents of `sae` (no error term) on rows `x` [n, d] (predicting `y`, a transcoder)."""
    y = x if y is None else y
    acts = sae.activation(sae.hidden_pre(x))
    recons = sae._decode(acts, x)
    fvu = float((y - recons).pow(2).sum() / (y - y.mean(0)).pow(2).sum())
    active = acts > 0
    return {"l0": float(active.sum(-1).float().mean()), "fvu": fvu, "dead": int((~active.any(0)).sum()),
            "d_sae": sae.cfg.d_sae}


@torch.no_grad()
def splice_effect(model, sae: SAE, items) -> dict:
    """Mean change of P(answer), of −log P(answer) and the KL(clean ‖ spliced) at the final position,
    with `sae` spliced without its error term, over `items`."""
    from lalm_lens.tracing.groups import final_position
    from lalm_lens.tracing.pipeline import answer_token

    dp, dloss, kl, p_clean = [], [], [], []
    for item in items:
        inp = model.prepare(item.audio, item.question, answer_prefix=item.answer_prefix, options=item.options)
        token, _ = answer_token(model, inp, item.answer)
        at = final_position(model.model_inputs(inp))
        clean = model(inp)[0, at].float().log_softmax(-1)
        with model.saes([sae], use_error_term=False):
            spliced = model(inp)[0, at].float().log_softmax(-1)
        dp.append(float(spliced[token].exp() - clean[token].exp()))
        dloss.append(float(clean[token] - spliced[token]))
        kl.append(float((clean.exp() * (clean - spliced)).sum()))
        p_clean.append(float(clean[token].exp()))
    n = len(dp)
    return {"p_answer": sum(p_clean) / n, "delta_p_answer": sum(dp) / n, "delta_loss": sum(dloss) / n,
            "kl": sum(kl) / n, "n_items": n}


def train_sae(model, items, hook: str, positions: str = "audio", d_sae: int = 256, k: int = 8, steps: int = 300,
              seed: int = 0, out: Union[str, Path] = "lalm-lens-out/sae", batch_size: int = 256,
              lr: float | None = None, holdout: float = 0.2, max_mb: float = 512.0, dtype: str = "float32",
              progress: bool = True, hook_out: str | None = None) -> tuple[SAE, dict]:
    """Collect `hook`'s activations at `positions` over `items`, train a TopK SAE (`d_sae` latents,
    `k` active; a transcoder into `hook_out` if given) for `steps` Adam steps, save it in sparsify's
    format under `out/<hook>` and return it with the report (also `out/report.json`)."""
    from lalm_lens.tracing.dataset import as_items

    check_hook(model, hook)
    check_positions(positions)
    if hook_out is not None and check_hook(model, hook_out) == hook:
        raise ValueError(f"hook_out={hook_out!r} is the input hook: a transcoder reads one hook and writes another")
    if not 0 < holdout < 1:
        raise ValueError(f"holdout={holdout} must be a fraction in (0, 1)")
    items = as_items(items)
    if len(items) < 2:
        raise ValueError(f"train_sae needs at least 2 items (one to train on, one held out), got {len(items)}")
    out = Path(out)
    store = collect_activations(model, items, hook, out / "activations", positions, max_mb, dtype, progress,
                                hook_out=hook_out)
    n = len(store.rows)
    if n < 2:
        raise ValueError(f"the activation store holds {n} item(s); train_sae needs 2 (raise max_mb)")
    n_test = max(1, math.ceil(holdout * n))
    train, test = store.load(slice(0, n - n_test)), store.load(slice(n - n_test, n))
    d_in = store.widths[0] if hook_out else None
    (train, train_y), (test, test_y) = _split(train, d_in), _split(test, d_in)
    target = train if train_y is None else train_y
    coder = new_coder(train.shape[1], d_sae, k, seed, target.mean(0), None if train_y is None else train.mean(0))
    initial = reconstruction_stats(as_sae(coder, out / "initial", hook, hook_out), test, test_y)
    coder = fit_coder(coder, train, steps, batch_size=batch_size, lr=lr, seed=seed, progress=progress, y=train_y)
    sae = as_sae(coder, out / hook, hook, hook_out)
    _remove(out / "initial")
    report = {**reconstruction_stats(sae, test, test_y), "fvu_initial": initial["fvu"], "dead_initial": initial["dead"],
              **splice_effect(model, sae, items[n - n_test:n]),
              "settings": {"hook": hook, "hook_out": hook_out, "positions": positions, "d_sae": d_sae, "k": k, "steps": steps, "seed": seed,
                           "batch_size": batch_size, "lr": lr, "holdout": holdout, "max_mb": max_mb, "dtype": dtype},
              "rows": {"train": len(train), "held_out": len(test)},
              "items": {"used": n, "given": len(items), "held_out": n_test}, "trainer": "sparsify.SparseCoder",
              "kind": "transcoder" if hook_out else "sae"}
    (out / "report.json").write_text(json.dumps(report, indent=2))
    return sae, report


def _split(rows: torch.Tensor, d_in: int | None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """A store's rows as (inputs, targets): targets None for an SAE, the columns after `d_in` for a transcoder."""
    return (rows, None) if d_in is None else (rows[:, :d_in], rows[:, d_in:])


def _remove(folder: Path) -> None:
    for f in folder.iterdir():
        f.unlink()
    folder.rmdir()
