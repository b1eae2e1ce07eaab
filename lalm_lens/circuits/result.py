"""`EdgeScores`: the typed result of edge attribution (save/load, summary, table, plot).

Files of the first edge-scores format (`"schema": "lalm-lens/edge-scores/1"`, no
`kind`) still load: `lalm_lens.result.upgrade` reads them."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional

import torch
from jaxtyping import Float
from torch import Tensor

from lalm_lens.circuits.graph import Graph
from lalm_lens.result import Result
from lalm_lens.tracing.numbers import to_float, to_floats


@dataclass
class EdgeScores(Result):
    """Scores of every edge of `graph` (`scores[s, r]`, 0 where no edge; `[s, r, g]` by position group)."""

    graph: Graph
    scores: Float[Tensor, "sender receiver *group"]
    method: str
    steps: int
    clean: float
    corrupted: float
    n_items: int
    metric: str
    corruption: dict
    position_groups: Optional[list[str]] = None
    settings: dict = field(default_factory=dict)
    kind: ClassVar[str] = "edge_scores"
    what: ClassVar[str] = "edge-scores file"

    @property
    def edge_scores(self) -> Float[Tensor, "sender receiver"]:
        """`[senders, receivers]`: summed over position groups where kept apart."""
        return self.scores if self.scores.ndim == 2 else self.scores.sum(-1)

    def flat(self) -> tuple[list[tuple[str, str]], Float[Tensor, " edge"]]:
        """Every valid edge's `(sender, receiver)` and its score, in one order."""
        idx = self.graph.valid.nonzero()
        return self.graph.edge_names(), self.edge_scores[idx[:, 0], idx[:, 1]]

    def top_edges(self, n: int = 10) -> list[tuple[str, str, float]]:
        """The `n` edges of largest |score|."""
        names, values = self.flat()
        order = values.abs().argsort(descending=True)[:n].tolist()
        return [(*names[i], float(values[i])) for i in order]

    def summary(self, n: int = 10) -> str:
        effect = self.clean - self.corrupted
        lines = [f"{self.method} edge scores ({self.steps} step(s)) of {self.metric} over {self.n_items} item(s); "
                 f"clean {self.clean:.4f}, corrupted {self.corrupted:.4f} (effect {effect:+.4f}); "
                 f"{self.graph.n_edges} edges, inputs {', '.join(self.graph.inputs)}",
                 f"top {n} edges by |score| (score ≈ m(edge corrupted) − m(clean)):"]
        for s, r, v in self.top_edges(n):
            lines.append(f"  {s:>14} -> {r:<14} {_fmt(v)}")
        return "\n".join(lines)

    def to_dataframe(self):
        import pandas as pd

        names, values = self.flat()
        return pd.DataFrame({"sender": [s for s, _ in names], "receiver": [r for _, r in names], "score": values.tolist()})

    def to_json(self) -> dict[str, Any]:
        return dict(super().to_json(), graph=self.graph.to_dict())

    @classmethod
    def _from_json(cls, d: dict[str, Any], source: str) -> "EdgeScores":
        try:
            d["graph"] = Graph.from_dict(d["graph"])
            d["scores"] = torch.tensor(to_floats(d["scores"]), dtype=torch.float64)
            d["clean"], d["corrupted"] = to_float(d["clean"]), to_float(d["corrupted"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{source} is not a valid edge-scores file ({type(err).__name__}: {err})") from None
        d["settings"] = d.get("settings") or {}
        return super()._from_json(d, source)

    def node_matrix(self) -> tuple[list[str], list[str], Float[Tensor, "sender receiver_node"]]:
        """Scores summed into sender nodes x receiver nodes (a head's q, k and v inputs together)."""
        rec_nodes = list(dict.fromkeys(r.node for r in self.graph.receivers))
        m = torch.zeros(len(self.graph.senders), len(rec_nodes), dtype=torch.float64)
        for j, rec in enumerate(self.graph.receivers):
            m[:, rec_nodes.index(rec.node)] += self.edge_scores[:, j].double()
        return self.graph.senders, rec_nodes, m

    def plot(self, ax=None, title: Optional[str] = None):
        """Sender node x receiver node map of the scores (diverging colours, zero white)."""
        import matplotlib.pyplot as plt

        senders, receivers, m = self.node_matrix()
        if ax is None:
            _, ax = plt.subplots(figsize=(min(16, 2 + 0.18 * len(receivers)), min(16, 2 + 0.18 * len(senders))))
        bound = float(m.abs().max()) or 1.0
        im = ax.imshow(m.numpy(), cmap="RdBu_r", vmin=-bound, vmax=bound, aspect="auto", interpolation="nearest")
        step = max(1, len(senders) // 40)
        ax.set_yticks(range(0, len(senders), step), senders[::step], fontsize=6)
        step = max(1, len(receivers) // 40)
        ax.set_xticks(range(0, len(receivers), step), receivers[::step], fontsize=6, rotation=90)
        ax.set_xlabel("receiver")
        ax.set_ylabel("sender")
        ax.set_title(title or f"{self.method} edge scores: {self.metric}")
        ax.figure.colorbar(im, ax=ax, label="≈ m(edge corrupted) − m(clean)")
        return ax


def _fmt(v: float) -> str:
    if not math.isfinite(v):
        return str(v)
    text = f"{v:+.4f}"
    return "+0.0000" if text == "-0.0000" else text
