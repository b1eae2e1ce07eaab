"""Circuits: a set of edges chosen from edge scores, pruned, evaluated for faithfulness, saved, drawn.

`evaluate_circuit` runs the clean input with every edge outside the circuit carrying the
corrupted run's sender output (or zero, or the clean run's mean over positions) while
circuit edges carry the values of the run itself:

    receiver input = the run's residual − Σ_{u → r not in circuit} (out_u − out_u^ablated)

so the full graph gives the clean run (faithfulness 1) and the empty graph the corrupted run
(faithfulness 0). Faithfulness = (m(circuit) − m(corrupted)) / (m(clean) − m(corrupted)).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Sequence

import torch
from torch import Tensor

from lalm_lens.circuits.graph import Graph
from lalm_lens.circuits.result import EdgeScores
from lalm_lens.circuits.runs import edge_hooks, edge_item, sender_outputs
from lalm_lens.tracing.pipeline import TraceSpec

SCHEMA = "lalm-lens/circuit/1"
ABLATIONS = ("corrupted", "zero", "mean")


@dataclass
class Circuit:
    """Edges of `graph` in the circuit (`in_circuit[s, r]`), with the scores they were chosen by."""

    graph: Graph
    in_circuit: Tensor  # [senders, receivers] bool
    scores: Optional[Tensor] = None
    settings: dict = field(default_factory=dict)

    @property
    def n_edges(self) -> int:
        return int(self.in_circuit.sum())

    def edges(self) -> list[tuple[str, str]]:
        return [(self.graph.senders[s], self.graph.receivers[r].name) for s, r in self.in_circuit.nonzero().tolist()]

    def nodes(self) -> list[str]:
        names = {n for s, r in self.in_circuit.nonzero().tolist()
                 for n in (self.graph.senders[s], self.graph.receivers[r].node)}
        order = self.graph.senders + ["logits"]
        return sorted(names, key=lambda n: order.index(n) if n in order else len(order))

    # -------------------------------------------------------------- choosing
    @classmethod
    def top_n(cls, scores: EdgeScores, n: int, prune: bool = True) -> "Circuit":
        """The `n` edges of largest |score| (then pruned: see `pruned`)."""
        values = scores.edge_scores.abs().masked_fill(~scores.graph.valid, -1.0)
        chosen = torch.zeros_like(scores.graph.valid)
        if n > 0:
            flat = values.flatten().argsort(descending=True)[:n]
            chosen.view(-1)[flat] = True
        chosen &= scores.graph.valid
        c = cls(scores.graph, chosen, scores.edge_scores, dict(selection="top_n", n=n, method=scores.method))
        return c.pruned() if prune else c

    @classmethod
    def threshold(cls, scores: EdgeScores, tau: float, prune: bool = True) -> "Circuit":
        """Edges with |score| ≥ `tau`."""
        chosen = (scores.edge_scores.abs() >= tau) & scores.graph.valid
        c = cls(scores.graph, chosen, scores.edge_scores, dict(selection="threshold", tau=tau, method=scores.method))
        return c.pruned() if prune else c

    @classmethod
    def greedy(cls, scores: EdgeScores, n: int) -> "Circuit":
        """Grow from the logits: repeatedly add the highest-|score| edge into a node already in the circuit."""
        g = scores.graph
        values = scores.edge_scores.abs().masked_fill(~g.valid, -1.0)
        chosen = torch.zeros_like(g.valid)
        open_receivers = torch.tensor([rec.kind == "logits" for rec in g.receivers])
        for _ in range(n):
            cand = values.masked_fill(~open_receivers[None, :] | chosen, -1.0)
            best = int(cand.flatten().argmax())
            if cand.flatten()[best] < 0:
                break
            s, r = divmod(best, values.shape[1])
            chosen[s, r] = True
            open_receivers |= torch.tensor([_feeds(g, g.senders[s], rec) for rec in g.receivers])
        return cls(g, chosen, scores.edge_scores, dict(selection="greedy", n=n, method=scores.method))

    def pruned(self) -> "Circuit":
        """Drop edges whose sender no circuit path reaches from an input, or whose receiver reaches no logits."""
        g, chosen = self.graph, self.in_circuit.clone()
        while True:
            live = set(g.inputs)
            for s, name in enumerate(g.senders):
                if name in live:
                    continue
                if any(chosen[u, r] and g.senders[u] in live for u in range(len(g.senders))
                       for r, rec in enumerate(g.receivers) if _feeds(g, name, rec)):
                    live.add(name)
            useful = {"logits"}
            for s in reversed(range(len(g.senders))):
                if any(chosen[s, r] and _useful(g, rec, useful) for r, rec in enumerate(g.receivers)):
                    useful.add(g.senders[s])
            keep = chosen.clone()
            for s, r in chosen.nonzero().tolist():
                if g.senders[s] not in live or not _useful(g, g.receivers[r], useful):
                    keep[s, r] = False
            if torch.equal(keep, chosen):
                break
            chosen = keep
        return Circuit(g, chosen, self.scores, {**self.settings, "pruned": True})

    # -------------------------------------------------------------- files and drawing
    def to_json(self) -> dict:
        edges = []
        for s, r in self.graph.valid.nonzero().tolist():
            edges.append(dict(sender=self.graph.senders[s], receiver=self.graph.receivers[r].name,
                              score=None if self.scores is None else float(self.scores[s, r]),
                              in_circuit=bool(self.in_circuit[s, r])))
        return dict(schema=SCHEMA, graph=self.graph.to_dict(), nodes=self.nodes(), edges=edges, settings=self.settings)

    def save(self, path) -> Path:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1))
        return path

    @classmethod
    def load(cls, path) -> "Circuit":
        d = json.loads(Path(path).read_text())
        if d.get("schema") != SCHEMA:
            raise ValueError(f"{path} is not a circuit file (schema {d.get('schema')!r}, expected {SCHEMA!r})")
        g = Graph.from_dict(d["graph"])
        chosen = torch.zeros_like(g.valid)
        scores = torch.zeros(g.valid.shape, dtype=torch.float64)
        for e in d["edges"]:
            s, r = g.sender_index(e["sender"]), g.receiver_index(e["receiver"])
            chosen[s, r] = bool(e["in_circuit"])
            scores[s, r] = e["score"] if e["score"] is not None else 0.0
        return cls(g, chosen, scores, d.get("settings") or {})

    def draw(self, ax=None, title: Optional[str] = None, backend: str = "auto"):
        """The circuit as a layered graph: inputs at the bottom (audio and text coloured apart), logits on
        top. `backend`: "graphviz" (`dot`), "networkx" (matplotlib), or "auto": graphviz where `dot` is
        installed. Returns the matplotlib axis either way."""
        from lalm_lens.circuits.draw import draw_graphviz, draw_networkx, drawing_backend

        draw = draw_graphviz if drawing_backend(backend) == "graphviz" else draw_networkx
        return draw(self, ax, title)

    def to_dot(self, title: Optional[str] = None) -> str:
        """The circuit as graphviz DOT text."""
        from lalm_lens.circuits.draw import to_dot

        return to_dot(self, title)


def _group(g: Graph, head: int) -> int:
    return head // (g.n_heads // g.n_kv_heads)


def _feeds(g: Graph, node: str, rec) -> bool:
    """Whether `rec` is an input of sender node `node` (a head's q, its group's k/v; an MLP's input)."""
    if node in g.inputs or rec.kind == "logits":
        return False
    if node.startswith("m"):
        return rec.kind == "mlp" and rec.node == node
    layer, head = (int(x) for x in node[1:].split(".h"))
    if rec.layer != layer:
        return False
    return (rec.kind == "q" and rec.head == head) or (rec.kind in "kv" and rec.head == _group(g, head))


def _useful(g: Graph, rec, useful: set[str]) -> bool:
    """Whether a receiver belongs to a node that reaches the logits."""
    if rec.kind == "logits":
        return True
    if rec.kind == "mlp":
        return rec.node in useful
    if rec.kind == "q":
        return f"a{rec.layer}.h{rec.head}" in useful
    per = g.n_heads // g.n_kv_heads
    return any(f"a{rec.layer}.h{h}" in useful for h in range(rec.head * per, (rec.head + 1) * per))


# -------------------------------------------------------------- evaluation
def circuit_score(model, circuit: Circuit, item, clean_out: Tensor, corr_out: Tensor, ablation: str = "corrupted") -> float:
    """The metric of the clean run with every edge outside `circuit` ablated (mean over noise samples)."""
    g = circuit.graph
    if ablation == "corrupted":
        ablated = corr_out
    elif ablation == "zero":
        ablated = torch.zeros_like(clean_out)
    elif ablation == "mean":
        ablated = clean_out.mean(2, keepdim=True).expand_as(clean_out)
    else:
        raise ValueError(f"ablation must be one of {ABLATIONS}, got {ablation!r}")
    runs = ablated.shape[0]
    outside = (g.valid & ~circuit.in_circuit).to(clean_out.dtype).to(clean_out.device)  # [senders, receivers]
    n_in, H, L = len(g.inputs), g.n_heads, g.n_layers
    current: list[Tensor] = []

    def diffs(n: int) -> Tensor:  # [n, runs, pos, d_model]
        return torch.stack(current[:n]) - ablated[:, :n].movedim(1, 0)

    def on_input(x, hook):
        current.extend((x[:, None] * item.input_masks[:, :, None].to(x.dtype)).unbind(1))

    def on_heads(x, hook):
        current.extend(x.unbind(2))

    def on_mlp(x, hook):
        current.append(x)

    def fix(layer: int, kind: str):
        recs = [i for i, rec in enumerate(g.receivers) if rec.layer == layer and rec.kind == kind]
        n_up = n_in + min(layer, L) * (H + 1) + (H if kind == "mlp" else 0)

        def hook_fn(x, hook):
            w = outside[:n_up, recs]
            if not bool(w.any()):
                return x
            d, w = diffs(n_up).double(), w.double()  # float64: the sum of many differences, rounded once
            if kind in ("q", "k", "v"):
                return (x.double() - torch.einsum("urpm,uh->rphm", d, w)).to(x.dtype)
            return (x.double() - torch.einsum("urpm,u->rpm", d, w[:, 0])).to(x.dtype)
        return hook_fn

    hooks = [("blocks.0.hook_resid_pre", on_input)]
    for layer in range(L):
        hooks += [(f"blocks.{layer}.hook_{k}_input", fix(layer, k)) for k in "qkv"]
        hooks += [(f"blocks.{layer}.attn.hook_result", on_heads), (f"blocks.{layer}.hook_mlp_in", fix(layer, "mlp")),
                  (f"blocks.{layer}.hook_mlp_out", on_mlp)]
    hooks.append((f"blocks.{L - 1}.hook_resid_post", fix(L, "logits")))
    inputs = {k: v.repeat(runs, *[1] * (v.ndim - 1)) if k != "input_features" or runs == 1 else v.repeat(runs, 1, 1)
              for k, v in item.job.clean.items()}
    with torch.no_grad(), edge_hooks(model), model.hooks(fwd_hooks=hooks):
        logits = model(inputs)
    return float(item.job.score(logits[:, item.job.final]).double().mean())


@dataclass
class Faithfulness:
    """Circuit sizes (edges) and the faithfulness of each."""

    sizes: list[int]
    faithfulness: list[float]
    clean: float
    corrupted: float
    ablation: str

    def plot(self, ax=None):
        import matplotlib.pyplot as plt

        if ax is None:
            _, ax = plt.subplots(figsize=(6, 4))
        ax.plot(self.sizes, self.faithfulness, marker="o")
        ax.axhline(1.0, color="grey", lw=0.8, ls="--")
        ax.set_xscale("symlog")
        ax.set_xlabel("edges in the circuit")
        ax.set_ylabel("faithfulness")
        ax.set_title(f"faithfulness ({self.ablation} ablation)")
        return ax

    def to_json(self) -> dict:
        return dict(sizes=self.sizes, faithfulness=self.faithfulness, clean=self.clean, corrupted=self.corrupted,
                    ablation=self.ablation)


def evaluate_circuit(model, circuit: Circuit, clean, corruption="silence", *, answer=None, metric=None,
                     ablation: str = "corrupted") -> float:
    """Faithfulness of `circuit` on one item (`answer=`) or a list of `(input, answer)` pairs:
    (m(circuit) − m(corrupted)) / (m(clean) − m(corrupted)), with means over items."""
    return faithfulness_curve(model, None, [circuit], clean, corruption, answer=answer,
                              metric=metric, ablation=ablation).faithfulness[0]


def faithfulness_curve(model, scores: Optional[EdgeScores], circuits: Sequence[Circuit] | Sequence[int], clean,
                       corruption="silence", *, answer=None, metric=None, ablation: str = "corrupted") -> Faithfulness:
    """Faithfulness of several circuits (or of the top-n circuits of `scores` for each n in `circuits`)."""
    from lalm_lens.circuits.attribution import _items, prepared

    circuits = [Circuit.top_n(scores, n) if isinstance(n, int) else n for n in circuits]
    g = circuits[0].graph
    m_clean, m_corr, m_circ = 0.0, 0.0, [0.0] * len(circuits)
    pairs = _items(clean, answer, metric)
    for inp, ans, item_metric in pairs:
        spec = TraceSpec(model, corruption=corruption, metric=item_metric, engine="reference")
        item = edge_item(model, g, spec, *prepared(model, inp, ans))
        clean_out, _, c = sender_outputs(model, g, item)
        corr_out, _, k = sender_outputs(model, g, item, corrupted=True)
        m_clean += float(c.mean())
        m_corr += float(k.mean())
        for i, circ in enumerate(circuits):
            m_circ[i] += circuit_score(model, circ, item, clean_out, corr_out, ablation)
    n = len(pairs)
    effect = (m_clean - m_corr) / n
    faith = [((m / n) - m_corr / n) / effect if effect else float("nan") for m in m_circ]
    return Faithfulness([c.n_edges for c in circuits], faith, m_clean / n, m_corr / n, ablation)

