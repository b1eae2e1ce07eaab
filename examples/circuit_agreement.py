"""Why EAP-IG and exact edge patching disagree on `demo-letters`: a breakdown of the disagreement.

Scores every edge of `demo-letters` over held-out items with EAP, EAP-IG (inputs and
activations, 5 and 20 steps) and two exact sweeps — noising (one edge corrupted, all
else clean: the ground truth of `edge_attribution`) and denoising (one edge restored,
all else corrupted) — and reports Spearman and top-1 % overlap by receiver kind, by
sender layer and by |score| range, the sums of single-edge effects against the whole
effect (interactions), and how far the top edges saturate the metric. Writes the raw
scores (`scores.pt`) and `agreement.txt` under --out.

    python examples/circuit_agreement.py --n 4            # ~20 min on 2 busy CPU cores
    python examples/circuit_agreement.py --analyse-only   # re-read scores.pt
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from lalm_lens import HookedLALM
from lalm_lens.circuits import Graph, edge_attribution
from lalm_lens.circuits.attribution import exact_scores
from lalm_lens.circuits.batch import EdgeBatch, batch_outputs
from lalm_lens.circuits.discover import item_triples
from lalm_lens.circuits.runs import edge_item
from lalm_lens.demo import write_demo_dataset
from lalm_lens.tracing import read_items
from lalm_lens.tracing.pipeline import TraceSpec

ESTIMATES = (("eap", 1), ("eap-ig-inputs", 5), ("eap-ig-inputs", 20), ("eap-ig-activations", 5),
             ("eap-ig-activations", 20))


def denoising(model, graph: Graph, triples) -> tuple[torch.Tensor, float]:
    """m(corrupted with one edge restored to its clean value) − m(corrupted), averaged over items
    (exact patching with the clean and corrupted runs' roles swapped; silence: one corrupted run)."""
    total, effect = torch.zeros(graph.valid.shape, dtype=torch.float64), 0.0
    for inp, ans, metric in triples:
        spec = TraceSpec(model, corruption="silence", metric=metric, engine="reference")
        item = edge_item(model, graph, spec, inp, ans)
        batch = EdgeBatch.of(model, [item])
        senders = range(len(graph.senders))
        clean = batch_outputs(model, graph, batch, False, senders)
        corr = batch_outputs(model, graph, batch, True, senders, keep_resid=True)
        total += exact_scores(model, graph, item, corr.outs, clean.outs, corr.resid[0])
        effect += float(clean.scores[0] - corr.scores[0])
    return total / len(triples), effect / len(triples)


def compute(args, out: Path) -> dict:
    items = read_items(write_demo_dataset(out / "items", n=args.n, seed=4321, task="letters"))
    model = HookedLALM.from_pretrained("demo-letters")
    triples = item_triples(model, items, foils=["A", "B", "C"])
    res, seconds = {}, {}
    for method, steps in (*ESTIMATES, ("exact", 1)):
        t = time.perf_counter()
        r = edge_attribution(model, triples, method=method, steps=steps, batch_size=len(triples))
        seconds[f"{method}/{steps}"] = time.perf_counter() - t
        res[f"{method}/{steps}"] = r.scores
        res["clean"], res["corrupted"] = r.clean, r.corrupted
        print(method, steps, f"{seconds[f'{method}/{steps}']:.0f} s", flush=True)
    t = time.perf_counter()
    res["denoising"], _ = denoising(model, Graph.from_model(model), triples)
    seconds["denoising"] = time.perf_counter() - t
    res["seconds"], res["n_items"], res["graph"] = seconds, len(triples), Graph.from_model(model).to_dict()
    torch.save(res, out / "scores.pt")
    return res


def ranks(x: torch.Tensor) -> torch.Tensor:
    """Average ranks (ties share their mean rank), as Spearman needs."""
    order = x.argsort()
    r = torch.empty_like(x, dtype=torch.float64)
    r[order] = torch.arange(len(x), dtype=torch.float64)
    _, inverse, counts = torch.unique(x, return_inverse=True, return_counts=True)
    sums = torch.zeros(len(counts), dtype=torch.float64).index_add_(0, inverse, r)
    return (sums / counts)[inverse]


def spearman(a: torch.Tensor, b: torch.Tensor) -> float:
    if len(a) < 3:
        return float("nan")
    ra, rb = ranks(a), ranks(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    den = float(ra.norm() * rb.norm())
    return float((ra * rb).sum()) / den if den else float("nan")


def overlap(a: torch.Tensor, b: torch.Tensor, frac: float) -> float:
    k = max(1, round(frac * len(a)))
    top = lambda x: set(x.abs().argsort(descending=True)[:k].tolist())  # noqa: E731
    return len(top(a) & top(b)) / k


def analyse(res: dict) -> str:
    g = Graph.from_dict(res["graph"])
    idx = g.valid.nonzero()
    flat = {k: v[idx[:, 0], idx[:, 1]] for k, v in res.items() if isinstance(v, torch.Tensor)}
    exact = flat["exact/1"]
    effect = res["clean"] - res["corrupted"]
    kinds = [g.receivers[r].kind for r in idx[:, 1].tolist()]
    layers = [g.sender_layer[s] for s in idx[:, 0].tolist()]
    text = torch.tensor([g.senders[s] == "text" for s in idx[:, 0].tolist()])
    lines = [f"demo-letters, {res['n_items']} held-out items, silence, metric logit(answer) - mean logit(other letters); "
             f"clean {res['clean']:.3f}, corrupted {res['corrupted']:.3f}, effect {effect:.3f}; {len(exact)} edges",
             "seconds: " + ", ".join(f"{k} {v:.0f}" for k, v in res["seconds"].items()), ""]
    names = [f"{m}/{s}" for m, s in ESTIMATES]
    # 1. the headline, and against denoising and the mean of the two exact directions
    sym = (exact - flat["denoising"]) / 2
    lines.append("1. Spearman / top-1 % overlap of each estimate with exact noising, exact denoising (sign flipped) "
                 "and their mean")
    lines.append(f"{'estimate':<24} {'noising':>15} {'denoising':>15} {'mean of both':>15}")
    for n in names:
        row = [f"{spearman(flat[n], t):.3f} / {overlap(flat[n], t, 0.01):.2f}" for t in (exact, -flat["denoising"], sym)]
        lines.append(f"{n:<24} " + " ".join(f"{c:>15}" for c in row))
    lines.append(f"{'exact denoising':<24} {spearman(-flat['denoising'], exact):>9.3f} / "
                 f"{overlap(-flat['denoising'], exact, 0.01):.2f}")
    # 2. where the disagreement sits
    moved = ~text
    lines += ["", f"2. Spearman with exact noising by subset (text-input edges: {int(text.sum())} edges whose Δ is 0 "
              "under an audio corruption, 0 in every method: ties)"]
    subsets = {"all edges": torch.ones(len(exact), dtype=torch.bool), "without text-input edges": moved}
    for kind in ("q", "k", "v", "mlp", "logits"):
        subsets[f"into {kind}"] = moved & torch.tensor([k == kind for k in kinds])
    for layer in sorted(set(layers)):
        subsets[f"from layer {layer}" if layer >= 0 else "from the audio input"] = moved & torch.tensor(
            [s == layer for s in layers])
    mag = exact.abs()
    q = torch.quantile(mag[moved], torch.tensor([0.5, 0.9], dtype=torch.float64))
    subsets["|exact| below its median"] = moved & (mag < q[0])
    subsets["|exact| in its top 10 %"] = moved & (mag >= q[1])
    lines.append(f"{'subset':<30} {'edges':>6} " + " ".join(f"{n:>22}" for n in names))
    for label, m in subsets.items():
        lines.append(f"{label:<30} {int(m.sum()):>6} " + " ".join(f"{spearman(flat[n][m], exact[m]):>22.3f}"
                                                                   for n in names))
    # 3. interactions: single-edge effects do not add up to the whole effect
    lines += ["", "3. Sums over all edges (the whole effect m(corrupted) - m(clean) is "
              f"{-effect:.3f}): single-edge effects add up only where edges do not interact"]
    for n in ("exact/1", "denoising", *names):
        lines.append(f"  sum of {n:<24} {float(flat[n].sum()):>9.3f}")
    # 4. saturation: the largest single edges
    order = exact.abs().argsort(descending=True)[:8].tolist()
    lines += ["", "4. The largest exact edges (fraction of the whole effect each removes alone) and the estimates"]
    lines.append(f"{'edge':<26} {'exact':>8} {'of effect':>9} {'denoise':>8} " + " ".join(f"{n:>22}" for n in names))
    for i in order:
        s, r = idx[i].tolist()
        e = float(exact[i])
        lines.append(f"{g.senders[s] + ' -> ' + g.receivers[r].name:<26} {e:>8.3f} {-e / effect:>9.2f} "
                     f"{float(flat['denoising'][i]):>8.3f} " + " ".join(f"{float(flat[n][i]):>22.3f}" for n in names))
    return "\n".join(lines)


def faithfulness_table(res: dict, out: Path, n: int, fractions=(0.05, 0.1, 0.2)) -> str:
    """Faithfulness of the top-n circuit (pruned) each method's scores choose, on the same items."""
    from lalm_lens.circuits import Circuit, EdgeScores, faithfulness_curve

    items = read_items(write_demo_dataset(out / "items", n=n, seed=4321, task="letters"))
    model = HookedLALM.from_pretrained("demo-letters")
    triples = item_triples(model, items, foils=["A", "B", "C"])
    g = Graph.from_dict(res["graph"])
    lines = ["", "5. Faithfulness of the top-n circuits (pruned; corrupted ablation) each score chooses, "
             + ", ".join(f"{f:.0%}" for f in fractions) + " of the edges"]
    for key in [f"{m}/{s}" for m, s in ESTIMATES] + ["exact/1", "denoising"]:
        sign = -1.0 if key == "denoising" else 1.0
        scores = EdgeScores(graph=g, scores=sign * res[key], method=key, steps=1, clean=res["clean"],
                            corrupted=res["corrupted"], n_items=res["n_items"], metric="", corruption={})
        circuits = [Circuit.top_n(scores, round(f * g.n_edges)) for f in fractions]
        curve = faithfulness_curve(model, None, circuits, triples)
        lines.append(f"  {key:<24} " + "  ".join(f"{c.n_edges:>4} edges {v:6.3f}"
                                                  for c, v in zip(circuits, curve.faithfulness)))
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--n", type=int, default=4, help="held-out items")
    p.add_argument("--out", default="lalm_lens_out/circuit_agreement", help="output folder")
    p.add_argument("--analyse-only", action="store_true", help="re-read scores.pt instead of computing")
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    res = torch.load(out / "scores.pt") if args.analyse_only else compute(args, out)
    text = analyse(res) + "\n" + faithfulness_table(res, out, res["n_items"])
    (out / "agreement.txt").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
