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

from typing import Optional, Sequence, Union

import torch
from jaxtyping import Float
from torch import Tensor

from lalm_lens.circuits.graph import Graph
from lalm_lens.circuits.result import EdgeScores
from lalm_lens.circuits.runs import EdgeItem, edge_item, patched_scores, receiver_gradients, sender_outputs
from lalm_lens.tracing.groups import GROUP_ORDER
from lalm_lens.tracing.trace import TraceSpec

METHODS = ("eap", "eap-ig-inputs", "eap-ig-activations", "exact")


def _items(clean, answer, metric=None) -> list[tuple]:
    """`(input, answer, metric)` triples from one input (`answer=`) or a list of `(input, answer)`
    pairs or `(input, answer, metric)` triples (a per-item metric, e.g. foils that depend on the item)."""
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


def _check_steps(steps) -> int:
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an integer >= 1, got {steps!r}")
    return steps


def sender_hook_names(graph: Graph) -> list[tuple[str, Optional[int]]]:
    """For each non-input sender: the hook that writes it and its head index (None for MLPs)."""
    names: list[tuple[str, Optional[int]]] = []
    for layer in range(graph.n_layers):
        names += [(f"blocks.{layer}.attn.hook_result", h) for h in range(graph.n_heads)]
        names.append((f"blocks.{layer}.hook_mlp_out", None))
    return names


class ScoreAccumulator:
    """Edge scores Δ_sender · gradient, added per receiver hook as the backward reaches it (weighted)."""

    def __init__(self, graph: Graph, delta: Tensor, groups: Optional[Tensor] = None):
        self.graph, self.delta, self.weight = graph, delta, 1.0
        self.groups = None if groups is None else groups.to(delta.device, delta.dtype)
        shape = (*graph.valid.shape, *(() if groups is None else (groups.shape[1],)))
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
        d = self.delta[:n_up]
        g = grad[0].to(d.dtype)
        if g.ndim == 2:
            g = g[:, None]  # [pos, 1, d_model]: one receiver
        if self.groups is None:
            part = torch.einsum("spm,phm->sh", d, g)
        else:
            part = torch.einsum("spm,phm,pg->shg", d, g, self.groups)
        self.scores[:n_up, cols] += self.weight * part.double().cpu()


def item_scores(model, graph: Graph, item: EdgeItem, method: str, steps: int,
                position_groups: Optional[Tensor] = None, edges=None) -> tuple[Tensor, float, float]:
    """Edge scores `[senders, receivers]` (or `[senders, receivers, groups]`) of one item, and its
    clean and corrupted metric."""
    clean_out, clean_resid, clean_score = sender_outputs(model, graph, item)
    corr_out, corr_resid, corr_scores = sender_outputs(model, graph, item, corrupted=True)
    scores = (float(clean_score[0]), float(corr_scores.mean()))
    if method == "exact":
        return exact_scores(model, graph, item, clean_out, corr_out, clean_resid[0], edges), *scores
    delta = corr_out.mean(0) - clean_out[0]  # [senders, pos, d_model]
    targets = None
    if method == "eap-ig-activations":
        targets = (clean_out[0], corr_out.mean(0))
    del clean_out, corr_out
    acc = ScoreAccumulator(graph, delta, position_groups)
    n = 1 if method == "eap" else steps
    acc.weight = 1.0 / n
    x0, x1 = corr_resid[:, 0].mean(0), clean_resid[0, 0]
    for k in range(1, n + 1):
        alpha = k / n
        if n == 1:
            receiver_gradients(model, graph, item, acc)
        elif method == "eap-ig-inputs":
            receiver_gradients(model, graph, item, acc, input_value=x0 + alpha * (x1 - x0))
        else:
            receiver_gradients(model, graph, item, acc, sender_values=_interpolated(graph, *targets, alpha, x0, x1))
    valid = graph.valid if position_groups is None else graph.valid[..., None]
    return acc.scores.masked_fill(~valid, 0.0), *scores


def _interpolated(graph: Graph, clean: Tensor, corr: Tensor, alpha: float, x0: Tensor, x1: Tensor) -> dict[str, Tensor]:
    """Every sender hook's value at `corrupted + alpha (clean − corrupted)`."""
    values: dict[str, Tensor] = {}
    n_in = len(graph.inputs)
    mix = corr + alpha * (clean - corr)
    for i, (name, head) in enumerate(sender_hook_names(graph)):
        if head is None:
            values[name] = mix[n_in + i][None]
        else:
            values.setdefault(name, torch.zeros(1, mix.shape[1], graph.n_heads, mix.shape[2], dtype=mix.dtype,
                                                device=mix.device))
            values[name][0, :, head] = mix[n_in + i]
    values["blocks.0.hook_resid_pre"] = (x0 + alpha * (x1 - x0))[None]
    return values


def exact_scores(model, graph: Graph, item: EdgeItem, clean_out: Tensor, corr_out: Tensor, clean_resid: Tensor,
                 edges: Optional[Sequence[tuple[int, int]]] = None, batch_rows: int = 64) -> Tensor:
    """`exact(e)` for every valid edge (or `edges`, as (sender, receiver) indices); `[senders, receivers]`,
    0 where no edge. Noise samples are separate rows, averaged."""
    pairs = [tuple(e) for e in (edges if edges is not None else graph.valid.nonzero().tolist())]
    runs = corr_out.shape[0]
    base = patched_scores(model, graph, item, clean_resid, lambda i: torch.zeros_like(clean_resid[0]),
                          [len(graph.receivers) - 1], batch_rows)[0]
    rows = [(s, r, k) for s, r in pairs for k in range(runs)]
    deltas = lambda i: corr_out[rows[i][2], rows[i][0]] - clean_out[0, rows[i][0]]  # noqa: E731
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
) -> EdgeScores:
    """Edge scores of one item (`answer=`) or of a list of `(input, answer)` pairs (averaged).

    `method`: "eap", "eap-ig-inputs" (default), "eap-ig-activations" or "exact" (one patched
    run per edge, the ground truth). `corruption` and `metric` are the library's values (as in
    `causal_trace`). `by_position=True` keeps position groups apart (`audio`, the prompt groups,
    `final`): scores `[senders, receivers, groups]`. `edges` (exact only): score just these
    `(sender, receiver)` names (the others stay 0).
    """
    if method not in METHODS:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    steps = _check_steps(steps)
    pairs = _items(clean, answer, metric)
    graph = graph or Graph.from_model(model)
    if edges is not None:
        if method != "exact":
            raise ValueError("edges= selects edges of exact patching only (method='exact')")
        edges = [_edge_index(graph, s, r) for s, r in edges]
    specs = {}
    total, cleans, corrs, group_names = None, [], [], None
    for inp, ans, item_metric in pairs:
        spec = specs.setdefault(id(item_metric), TraceSpec(model, corruption=corruption, metric=item_metric,
                                                           engine="reference"))
        item = edge_item(model, graph, spec, inp, ans)
        groups = None
        if by_position:
            group_names = list(GROUP_ORDER)  # the same columns for every item
            groups = torch.tensor([[float(g == name) for name in group_names] for g in item.groups])
        scores, c, k = item_scores(model, graph, item, method, steps, groups, edges)
        total = scores.double() if total is None else total + scores.double()
        cleans.append(c)
        corrs.append(k)
    scores = total / len(pairs)
    return EdgeScores(graph=graph, scores=scores, method=method, steps=steps if method.startswith("eap-ig") else 1,
                      clean=sum(cleans) / len(cleans), corrupted=sum(corrs) / len(corrs), n_items=len(pairs),
                      metric=spec.metric.describe(), corruption=spec.corruption.to_dict(), position_groups=group_names)


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
