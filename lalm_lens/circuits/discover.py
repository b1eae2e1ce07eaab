"""One call from items to a checked circuit: scores, a circuit, its faithfulness curve, figures.

Used by `lalm-lens circuit` and `examples/circuit_discovery.py`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from lalm_lens.circuits.attribution import edge_attribution
from lalm_lens.circuits.circuit import Circuit, Faithfulness, faithfulness_curve
from lalm_lens.circuits.compare import spearman, top_overlap
from lalm_lens.circuits.result import EdgeScores
from lalm_lens.tracing.metrics import LogitDiff, Metric, as_metric

CURVE_FRACTIONS = (0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0)


def item_triples(model, items, metric=None, foils: Optional[Sequence[str]] = None) -> list[tuple]:
    """`(prepared input, answer, metric)` per item (`lalm_lens.tracing.Item`s or dicts); with `foils`, the
    metric is logit(answer) − mean logit(the foils other than this item's answer)."""
    from lalm_lens.tracing.dataset import as_items

    triples = []
    for item in as_items(items):
        inp = model.prepare(item.audio, item.question, answer_prefix=item.answer_prefix, options=item.options)
        m = as_metric(metric)
        if foils is not None:
            m = LogitDiff(foil=[f for f in foils if str(f) != str(item.answer)])
        triples.append((inp, item.answer, m))
    return triples


@dataclass
class Discovery:
    scores: EdgeScores
    circuit: Circuit
    curve: Faithfulness
    exact: Optional[EdgeScores] = None

    def numbers(self) -> dict:
        d = dict(method=self.scores.method, steps=self.scores.steps, n_items=self.scores.n_items,
                 n_edges=self.scores.graph.n_edges, circuit_edges=self.circuit.n_edges,
                 circuit_fraction=self.circuit.n_edges / self.scores.graph.n_edges,
                 faithfulness=dict(zip(self.curve.sizes, self.curve.faithfulness)),
                 clean=self.curve.clean, corrupted=self.curve.corrupted)
        if self.exact is not None:
            d.update(spearman_vs_exact=spearman(self.scores, self.exact),
                     top1pct_overlap_vs_exact=top_overlap(self.scores, self.exact, 0.01))
        return d

    def save(self, out, html: bool = True) -> Path:
        import matplotlib.pyplot as plt

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        self.scores.save(out / "edge_scores.json")
        self.circuit.save(out / "circuit.json")
        (out / "circuit.dot").write_text(self.circuit.to_dot())  # for graphviz, installed or not
        if self.exact is not None:
            self.exact.save(out / "exact_scores.json")
        (out / "faithfulness.json").write_text(json.dumps(self.curve.to_json(), indent=1))
        (out / "summary.json").write_text(json.dumps(self.numbers(), indent=1, default=str))
        for name, draw in (("faithfulness.png", self.curve.plot), ("circuit.png", self.circuit.draw),
                           ("edge_scores.png", self.scores.plot)):
            ax = draw()
            ax.figure.tight_layout()
            ax.figure.savefig(out / name, dpi=120)
            plt.close(ax.figure)
        if html:
            self.scores.to_html(out / "edge_scores.html")
        return out


def discover(model, triples: list[tuple], corruption="silence", *, method: str = "eap-ig-inputs", steps: int = 5,
             fraction: float = 0.1, compare_exact: bool = False, batch_size: int = 1,
             max_delta_gib: Optional[float] = None) -> Discovery:
    """Score every edge over `triples`, keep the top `fraction` of edges (pruned), and measure the
    faithfulness of top-n circuits over sizes up to the whole graph (`batch_size`, `max_delta_gib`:
    as in `edge_attribution`)."""
    scores = edge_attribution(model, triples, corruption, method=method, steps=steps, batch_size=batch_size,
                              max_delta_gib=max_delta_gib)
    n_all = scores.graph.n_edges
    circuit = Circuit.top_n(scores, max(1, round(fraction * n_all)))
    sizes = sorted({round(f * n_all) for f in CURVE_FRACTIONS})
    curve = faithfulness_curve(model, scores, [*sizes, circuit], triples, corruption)
    exact = (edge_attribution(model, triples, corruption, method="exact", batch_size=batch_size,
                              max_delta_gib=max_delta_gib) if compare_exact else None)
    return Discovery(scores, circuit, curve, exact)


__all__ = ["Discovery", "discover", "item_triples", "Metric"]
