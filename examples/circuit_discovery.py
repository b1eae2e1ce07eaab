"""How the heard option reaches the letter: edge attribution and circuits on `demo-letters` (and `demo`).

Scores every edge of the demo model's LM (inputs split into audio and text, 24 heads, 6 MLPs,
logits) over held-out items with EAP, EAP-IG (inputs and activations) and exact edge patching,
compares each estimate with the exact scores (Spearman over all edges, overlap of the top 1 %),
and measures the faithfulness of top-n circuits chosen by each. Writes figures and a JSON
summary under --out.

    python examples/circuit_discovery.py                      # 6 items, ~5 min on 2 CPU cores
    python examples/circuit_discovery.py --model demo --n 6
"""

import argparse
import json
import time
from pathlib import Path

import matplotlib.pyplot as plt

from lalm_lens import HookedLALM
from lalm_lens.circuits import Circuit, edge_attribution, faithfulness_curve
from lalm_lens.circuits.compare import spearman, top_overlap
from lalm_lens.circuits.discover import item_triples
from lalm_lens.demo import write_demo_dataset
from lalm_lens.tracing import read_items

METHODS = ("eap", "eap-ig-inputs", "eap-ig-activations")
FRACTIONS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="demo-letters", choices=["demo-letters", "demo"])
    p.add_argument("--n", type=int, default=6, help="held-out items")
    p.add_argument("--out", default="lalm_lens_out/circuit_discovery", help="output folder")
    args = p.parse_args()
    out = Path(args.out) / args.model
    task = "letters" if args.model == "demo-letters" else "attributes"
    items = read_items(write_demo_dataset(out / "items", n=args.n, seed=4321, task=task))
    model = HookedLALM.from_pretrained(args.model)
    foils = ["A", "B", "C"] if task == "letters" else None
    # demo: P(answer) saturates near 1; the logit of the answer minus the other values of its attribute is linear-ish
    triples = item_triples(model, items, foils=foils) if foils else item_triples(model, items, metric="logit_diff")
    scores, seconds = {}, {}
    for method in (*METHODS, "exact"):
        t = time.perf_counter()
        scores[method] = edge_attribution(model, triples, method=method, steps=5, batch_size=len(triples))
        seconds[method] = time.perf_counter() - t
    exact = scores["exact"]
    n_all = exact.graph.n_edges
    summary = dict(model=args.model, n_items=len(triples), n_edges=n_all, seconds=seconds,
                   clean=exact.clean, corrupted=exact.corrupted, methods={})
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for method, s in scores.items():
        circuits = [Circuit.top_n(s, round(f * n_all)) for f in FRACTIONS]
        curve = faithfulness_curve(model, None, circuits, triples)
        row = dict(faithfulness={f"{f:.0%} ({c.n_edges} edges after pruning)": v
                                 for f, c, v in zip(FRACTIONS, circuits, curve.faithfulness)})
        if method != "exact":
            row.update(spearman=spearman(s, exact), spearman_top5pct=spearman(s, exact, among=0.05),
                       top1pct_overlap=top_overlap(s, exact, 0.01),
                       top5pct_overlap=top_overlap(s, exact, 0.05))
        summary["methods"][method] = row
        ax.plot([100 * f for f in FRACTIONS], curve.faithfulness, marker="o", label=method)
        print(method, json.dumps(row, indent=1))
    ax.axhline(0.8, color="grey", lw=0.8, ls="--")
    ax.set_xscale("log")
    ax.set_xlabel("% of edges kept (top |score|, pruned)")
    ax.set_ylabel("faithfulness")
    ax.set_title(f"{args.model}: circuits chosen by each method ({len(triples)} items)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "faithfulness_by_method.png", dpi=120)
    best = Circuit.top_n(scores["exact"], round(0.1 * n_all))
    ax = best.draw(title=f"{args.model}: top 10 % of edges by exact score ({best.n_edges} after pruning)")
    ax.figure.savefig(out / "circuit_exact_10pct.png", dpi=120)
    ax = Circuit.top_n(scores["eap-ig-inputs"], round(0.1 * n_all)).draw()
    ax.figure.savefig(out / "circuit_eap_ig_10pct.png", dpi=120)
    for method, s in scores.items():
        s.save(out / f"scores_{method}.json")
    print(exact.summary(15))
    (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
