"""Edge attribution: EAP and EAP with integrated gradients, and exact edge and path patching.

The score of an edge sender -> receiver is how much the metric moves when that one
edge carries the corrupted run's sender output while everything else is clean:

    exact(e) = m(clean, receiver input + Δ_sender) − m(clean),   Δ = out_corrupted − out_clean

EAP (Syed et al. 2023) takes the first-order estimate Δ_sender · ∂m/∂(receiver input)
at the clean run: one clean forward and backward, one corrupted forward per item.
EAP-IG (Hanna et al. 2024) averages the gradient over `steps` points between the
corrupted and the clean run, either of the input (`eap-ig-inputs`: the residual
entering block 0) or of every sender output at once (`eap-ig-activations`);
`steps=1` is EAP. Noise corruptions average over their samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence, Union

import torch
from torch import Tensor

from lalm_lens.circuits.graph import Graph
from lalm_lens.circuits.result import EdgeScores
from lalm_lens.circuits.batch import EdgeBatch, batch_gradients, batch_outputs, sender_chunk
from lalm_lens.circuits.runs import EdgeItem, edge_item, patched_scores, sender_outputs
from lalm_lens.tracing.groups import GROUP_ORDER
from lalm_lens.tracing.pipeline import TraceSpec

METHODS = ("eap", "eap-ig-inputs", "eap-ig-activations", "exact")


def _items(clean, answer, metric=None) -> list[tuple]:
    """`(input, answer, metric)` triples from one input (`answer=`), a list of `(input, answer)` pairs or
    `(input, answer, metric)` triples (a per-item metric, e.g. foils that depend on the item), or what
    `trace_dataset` takes (an items file, `Item`s or dicts: `(Item, None, metric)`, prepared later)."""
    from lalm_lens.tracing.dataset import Item, as_items

    if isinstance(clean, (str, Path)) or (isinstance(clean, (list, tuple)) and clean
                                          and all(isinstance(i, (Item, dict)) for i in clean)):
        if answer is not None:
            raise TypeError("dataset items carry their answers; answer= is for one prepared input")
        return [(item, None, metric) for item in as_items(clean)]
    if isinstance(clean, (list, tuple)):
        if answer is not None:
            raise TypeError("pass either one input with answer=..., or a list of (input, answer) pairs")
        if not clean:
            raise ValueError("no items given")
        out = []
        for item in clean:
            if not (isinstance(item, (list, tuple)) and len(item) in (2, 3)):
                raise TypeError("items must be (prepared input, answer) pairs or (input, answer, metric) triples")
            out.append((item[0], item[1], item[2] if len(item) == 3 else metric))
        return out
    if answer is None:
        raise TypeError("answer= is required for one item")
    return [(clean, answer, metric)]


def prepared(model, inp, answer) -> tuple:
    """`(input, answer)`: a dataset `Item` prepared with the model, anything else as it is."""
    from lalm_lens.tracing.dataset import Item

    if isinstance(inp, Item):
        return model.prepare(inp.audio, inp.question, answer_prefix=inp.answer_prefix, options=inp.options), inp.answer
    return inp, answer


def _check_steps(steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return steps


class ScoreAccumulator:
    """Edge scores Δ_sender · gradient, summed over the batch's items, added per receiver hook as the
    backward reaches it (weighted); Δ `[B, chunk, W, d_model]` holds the senders `lo, lo + 1, ...`."""

    def __init__(self, graph: Graph, delta: Tensor, lo: int = 0, groups: Optional[Tensor] = None):
        self.graph, self.delta, self.lo, self.weight = graph, delta, lo, 1.0
        self.groups = None if groups is None else groups.to(delta.device, delta.dtype)  # [B, W, n_groups]
        shape = (*graph.valid.shape, *(() if groups is None else (groups.shape[-1],)))
        self.scores = torch.zeros(shape, dtype=torch.float64)
        self.columns: dict[str, list[int]] = {}
        for r, rec in enumerate(graph.receivers):
            name = ("logits" if rec.kind == "logits" else
                    f"blocks.{rec.layer}.hook_mlp_in" if rec.kind == "mlp" else f"blocks.{rec.layer}.hook_{rec.kind}_input")
            self.columns.setdefault(name, []).append(r)
        self.columns[f"blocks.{graph.n_layers - 1}.hook_resid_post"] = self.columns.pop("logits")

    def __call__(self, name: str, grad: Tensor) -> None:
        cols = self.columns[name]
        n_up = int(self.graph.valid[:, cols[0]].sum())  # senders are ordered: upstream ones come first
        hi = min(self.lo + self.delta.shape[1], n_up)
        if hi <= self.lo:
            return
        d = self.delta[:, : hi - self.lo]
        g = grad.to(d.dtype)
        if g.ndim == 3:
            g = g[:, :, None]  # [B, pos, 1, d_model]: one receiver
        if self.groups is None:
            part = torch.einsum("bspm,bphm->sh", d, g)
        else:
            part = torch.einsum("bspm,bphm,bpg->shg", d, g, self.groups)
        self.scores[self.lo:hi, cols] += self.weight * part.double().cpu()


@dataclass
class EdgeSums:
    """Edge scores and metrics summed over items (one rank's share, or all of them after `reduce`)."""

    scores: Tensor
    clean: float = 0.0
    corrupted: float = 0.0
    n: int = 0

    def add(self, other: "EdgeSums") -> None:
        self.scores += other.scores
        self.clean += other.clean
        self.corrupted += other.corrupted
        self.n += other.n

    def reduce(self, dist, device) -> "EdgeSums":
        """Summed over the ranks of a torchrun (nothing to do in one process)."""
        if not dist.active:
            return self
        import torch.distributed as td

        flat = torch.cat([self.scores.flatten(), torch.tensor([self.clean, self.corrupted, float(self.n)],
                                                              dtype=torch.float64)]).to(device)
        td.all_reduce(flat)
        flat = flat.cpu()
        k = self.scores.numel()
        return EdgeSums(flat[:k].view_as(self.scores), float(flat[k]), float(flat[k + 1]), int(round(float(flat[k + 2]))))


def batch_scores(model, graph: Graph, items: list[EdgeItem], method: str, steps: int,
                 by_position: bool = False, edges=None, max_delta_gib: Optional[float] = None) -> EdgeSums:
    """Edge scores `[senders, receivers]` (or `[..., groups]`) summed over `items`, run as one padded
    batch, and their summed clean and corrupted metrics. Senders go in chunks under `max_delta_gib`."""
    batch = EdgeBatch.of(model, items)
    groups = None
    if by_position:
        groups = torch.stack([_pad_rows(torch.tensor([[float(g == name) for name in GROUP_ORDER] for g in it.groups]),
                                        batch.width) for it in items]).to(model.device)
    n_s = len(graph.senders)
    chunk = sender_chunk(n_s, batch, model.cfg.d_model, model.cfg.dtype, max_delta_gib)
    total = torch.zeros((*graph.valid.shape, *(() if groups is None else (groups.shape[-1],))), dtype=torch.float64)
    sums = EdgeSums(total, n=len(items))
    corr_rows = batch.rows(True)
    for lo in range(0, n_s, chunk):
        senders = range(lo, min(n_s, lo + chunk))
        pairs = None
        if method == "exact":
            pairs = [(s, r) for s, r in (edges if edges is not None else graph.valid.nonzero().tolist()) if s in senders]
            if not pairs and lo:
                continue
        acts = method == "eap-ig-activations"
        exact = method == "exact"
        clean = batch_outputs(model, graph, batch, False, senders, keep_resid=exact, keep_hooks=acts, check=lo == 0)
        corr = batch_outputs(model, graph, batch, True, senders, keep_hooks=acts, check=lo == 0)
        if lo == 0:
            sums.clean = float(clean.scores.sum())
            sums.corrupted = float(batch.per_item(corr.scores[:, None], corr_rows).sum())
        if exact:
            for b, it in enumerate(items):
                T, sel = batch.lengths[b], [i for i, r in enumerate(corr_rows) if r == b]
                total += exact_scores(model, graph, it, clean.outs[b:b + 1, :, :T], corr.outs[sel][:, :, :T],
                                      clean.resid[b, :, :T], pairs, offset=lo)
            continue
        delta = batch.per_item(corr.outs, corr_rows) - clean.outs  # [B, chunk, W, d_model]
        delta *= batch.valid[:, None, :, None].to(delta.dtype)
        x1, x0 = clean.embed, batch.per_item(corr.embed, corr_rows)
        targets = None
        if acts:
            targets = {k: (v, batch.per_item(corr.hook_values[k], corr_rows)) for k, v in clean.hook_values.items()}
            targets["blocks.0.hook_resid_pre"] = (x1, x0)
        del clean, corr
        acc = ScoreAccumulator(graph, delta, lo, groups)
        n = 1 if method == "eap" else steps
        acc.weight = 1.0 / n
        for k in range(1, n + 1):
            alpha = k / n
            values = None
            if acts and n > 1:
                values = {name: c0 + alpha * (c1 - c0) for name, (c1, c0) in targets.items()}
            x = x1 if n == 1 or method == "eap" else x0 + alpha * (x1 - x0)
            batch_gradients(model, graph, batch, x, acc, sender_values=values)
        total += acc.scores
        del acc, delta
    valid = graph.valid if groups is None else graph.valid[..., None]
    sums.scores = total.masked_fill(~valid, 0.0)
    return sums


def _pad_rows(t: Tensor, n: int) -> Tensor:
    return torch.cat([t, t.new_zeros(n - t.shape[0], *t.shape[1:])]) if t.shape[0] < n else t


def exact_scores(model, graph: Graph, item: EdgeItem, clean_out: Tensor, corr_out: Tensor, clean_resid: Tensor,
                 edges: Optional[Sequence[tuple[int, int]]] = None, batch_rows: int = 64, offset: int = 0) -> Tensor:
    """`exact(e)` for every valid edge (or `edges`, as (sender, receiver) indices); `[senders, receivers]`,
    0 where no edge. Noise samples are separate rows, averaged. `clean_out`/`corr_out` hold the senders
    `offset, offset + 1, ...` (a chunk of them)."""
    pairs = [tuple(e) for e in (edges if edges is not None else graph.valid.nonzero().tolist())]
    runs = corr_out.shape[0]
    base = patched_scores(model, graph, item, clean_resid, lambda i: torch.zeros_like(clean_resid[0]),
                          [len(graph.receivers) - 1], batch_rows)[0]
    rows = [(s, r, k) for s, r in pairs for k in range(runs)]
    deltas = lambda i: corr_out[rows[i][2], rows[i][0] - offset] - clean_out[0, rows[i][0] - offset]  # noqa: E731
    scores = patched_scores(model, graph, item, clean_resid, deltas, [r for _, r, _ in rows], batch_rows)
    out = torch.zeros(graph.valid.shape, dtype=torch.float64)
    for (s, r, _), v in zip(rows, scores.tolist()):
        out[s, r] += (v - float(base)) / runs
    return out


def edge_attribution(
    model,
    clean,
    corruption="silence",
    *,
    answer=None,
    metric=None,
    method: str = "eap-ig-inputs",
    steps: int = 5,
    graph: Optional[Graph] = None,
    by_position: bool = False,
    edges: Optional[Sequence[tuple[str, str]]] = None,
    batch_size: int = 1,
    max_delta_gib: Optional[float] = None,
) -> EdgeScores:
    """Edge scores of one item (`answer=`) or of a dataset, averaged over its items (each item weighs
    the same: scores, clean and corrupted metrics are sums over items divided by their number).

    A dataset is a list of `(input, answer)` pairs or `(input, answer, metric)` triples, or what
    `trace_dataset` takes (an items file, `Item`s, dicts), prepared one by one. `batch_size` items
    run as the right-padded rows of one batch (any audio lengths; the same scores as one at a time).
    Under `torchrun` each rank takes every N-th item and the sums are all-reduced: every rank
    returns the whole dataset's result.

    `method`: "eap", "eap-ig-inputs" (default), "eap-ig-activations" or "exact" (one patched
    run per edge, the ground truth). `corruption` and `metric` are the library's values (as in
    `causal_trace`). `by_position=True` keeps position groups apart (`audio`, the prompt groups,
    `final`): scores `[senders, receivers, groups]`. `edges` (exact only): score just these
    `(sender, receiver)` names (the others stay 0). `max_delta_gib` bounds the per-edge activation
    difference (`batch.py` gives its size): senders are taken in chunks, each re-running the item.
    """
    from lalm_lens.tracing import distributed

    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    steps = _check_steps(steps)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    pairs = _items(clean, answer, metric)
    graph = graph or Graph.from_model(model)
    if edges is not None:
        if method != "exact":
            raise ValueError("edges= selects edges of exact patching only (method='exact')")
        edges = [_edge_index(graph, s, r) for s, r in edges]
    specs: dict[int, TraceSpec] = {}
    spec_of = lambda m: specs.setdefault(id(m), TraceSpec(model, corruption=corruption, metric=m,  # noqa: E731
                                                          engine="reference"))
    spec = spec_of(pairs[0][2])
    dist = distributed.setup(model.device)
    mine = dist.share(pairs)
    shape = (*graph.valid.shape, *((len(GROUP_ORDER),) if by_position else ()))
    sums = EdgeSums(torch.zeros(shape, dtype=torch.float64))
    for lo in range(0, len(mine), batch_size):
        items = [edge_item(model, graph, spec_of(m), *prepared(model, inp, ans)) for inp, ans, m in mine[lo:lo + batch_size]]
        sums.add(batch_scores(model, graph, items, method, steps, by_position, edges, max_delta_gib))
    sums = sums.reduce(dist, model.device)
    n = sums.n
    return EdgeScores(graph=graph, scores=sums.scores / n, method=method, steps=steps if method.startswith("eap-ig") else 1,
                      clean=sums.clean / n, corrupted=sums.corrupted / n, n_items=n, metric=spec.metric.describe(),
                      corruption=spec.corruption.to_dict(), position_groups=list(GROUP_ORDER) if by_position else None)


def exact_edge_patching(model, clean, corruption="silence", *, answer=None, metric=None,
                        graph: Optional[Graph] = None, edges: Optional[Sequence[tuple[str, str]]] = None) -> EdgeScores:
    """The ground truth of edge attribution: one patched run per edge, or per edge of `edges`
    (`(sender, receiver)` names); see `edge_attribution`."""
    return edge_attribution(model, clean, corruption, answer=answer, metric=metric, method="exact", graph=graph,
                            edges=edges)


def _edge_index(graph: Graph, sender: str, receiver: str) -> tuple[int, int]:
    s, r = graph.sender_index(sender), graph.receiver_index(_kv_name(graph, receiver))
    if not graph.valid[s, r]:
        raise ValueError(f"{sender} does not reach {receiver}: a sender reaches only receivers after it")
    return s, r


def path_patching(model, clean, corruption="silence", *, answer, sender: str, receiver: str,
                  metric=None, graph: Optional[Graph] = None) -> float:
    """m(clean with `sender`'s corrupted output reaching `receiver` only) − m(clean), exactly.

    `receiver` names one input of a node: "a3.h1<q>", "a3.h1<k>" (its key/value head's input),
    "m3" or "logits"; everything after the receiver is recomputed (Wang et al. 2022)."""
    graph = graph or Graph.from_model(model)
    s, r = _edge_index(graph, sender, receiver)
    spec = TraceSpec(model, corruption=corruption, metric=metric, engine="reference")
    item = edge_item(model, graph, spec, clean, answer)
    clean_out, clean_resid, _ = sender_outputs(model, graph, item)
    corr_out, _, _ = sender_outputs(model, graph, item, corrupted=True)
    return float(exact_scores(model, graph, item, clean_out, corr_out, clean_resid[0], edges=[(s, r)])[s, r])


def _kv_name(graph: Graph, name: str) -> str:
    """Accept "a3.h5<k>" under GQA: the key/value head that serves query head 5."""
    if graph.n_kv_heads == graph.n_heads or not name.endswith(("<k>", "<v>")) or ".h" not in name:
        return name
    node, kind = name[:-3], name[-3:]
    layer, head = node.split(".h")
    return f"{layer}.kv{int(head) // (graph.n_heads // graph.n_kv_heads)}{kind}"


Number = Union[int, float]
