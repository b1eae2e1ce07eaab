"""Agreement between two edge scorings: Spearman's rank correlation and top-edge overlap."""

from __future__ import annotations

import torch

from lalm_lens.circuits.result import EdgeScores


def _ranks(x: torch.Tensor) -> torch.Tensor:
    """Average ranks (ties share their mean rank), 0-based."""
    import pandas as pd

    return torch.tensor(pd.Series(x.double().numpy()).rank(method="average").to_numpy() - 1.0)


def spearman(a: EdgeScores, b: EdgeScores, among: float | None = None) -> float:
    """Spearman's rho between the two scorings over every valid edge (or over `b`'s top `among`
    fraction of edges by |score|, where the near-zero mass of unimportant edges cannot dominate)."""
    _, x = a.flat()
    _, y = b.flat()
    if among is not None:
        keep = y.abs().argsort(descending=True)[:max(2, round(among * len(y)))]
        x, y = x[keep], y[keep]
    rx, ry = _ranks(x), _ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    return float((rx * ry).sum() / (rx.norm() * ry.norm()))


def top_overlap(a: EdgeScores, b: EdgeScores, fraction: float = 0.01) -> float:
    """The fraction of `b`'s top edges by |score| that are also among `a`'s (same count, at least 1)."""
    _, x = a.flat()
    _, y = b.flat()
    k = max(1, round(fraction * len(x)))
    top_a = set(x.abs().argsort(descending=True)[:k].tolist())
    top_b = set(y.abs().argsort(descending=True)[:k].tolist())
    return len(top_a & top_b) / k
