"""The runs edge attribution needs: sender outputs, receiver gradients, edge-patched suffixes.

All three switch on TransformerLens's optional hook points (`hook_result`,
`hook_{q,k,v}_input`, `hook_mlp_in`) for their duration and hand the residual
decomposition of `graph.py` to plain hooks, so they run on every family.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Iterator

import torch
from jaxtyping import Float
from torch import Tensor

from lalm_lens.circuits.graph import Graph
from lalm_lens.tracing.engines.base import TraceJob
from lalm_lens.tracing.pipeline import Layout, TraceSpec, prepare_job

FLAGS = ("use_attn_result", "use_split_qkv_input", "use_hook_mlp_in")


@contextmanager
def edge_hooks(model) -> Iterator[None]:
    """The split per-head hook points on, parameter gradients off; both restored afterwards."""
    saved = {f: getattr(model.cfg, f) for f in FLAGS}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    try:
        for f in FLAGS:
            setattr(model.cfg, f, True)
        for p in model.parameters():
            p.requires_grad_(False)
        yield
    finally:
        for f, v in saved.items():
            setattr(model.cfg, f, v)
        for n, p in model.named_parameters():
            p.requires_grad_(grads[n])


@dataclass
class EdgeItem:
    """One item as the edge functions see it: the trace job (clean and corrupted inputs, the bound
    metric), the position groups, and which positions each input node covers."""

    job: TraceJob
    groups: list[str]
    input_masks: Float[Tensor, "n_inputs pos"]
    answer: str

    @property
    def n_pos(self) -> int:
        return self.job.clean["input_ids"].shape[1]


def edge_item(model, graph: Graph, spec: TraceSpec, clean, answer) -> EdgeItem:
    job, labels, _ = prepare_job(model, spec, clean, answer, layout=lambda groups: Layout([]))
    seconds = (getattr(clean, "meta", None) or {}).get("audio_seconds")
    seconds = None if not seconds or seconds[0] is None else [float(t) for t in seconds[0]]
    masks = graph.input_masks(labels.groups, seconds).to(model.device)
    return EdgeItem(job, labels.groups, masks, labels.answer)


def _inputs_of(item: EdgeItem, corrupted: bool) -> tuple[dict, list]:
    if corrupted:
        return item.job.corrupted.batch(), item.job.corrupted.hooks()
    return item.job.clean, []


def sender_outputs(model, graph: Graph, item: EdgeItem, corrupted: bool = False
                   ) -> tuple[Float[Tensor, "runs senders pos d_model"], Tensor, Tensor]:
    """Every sender's output in the clean (or corrupted: one row per noise sample) run, the residual
    entering each block `[runs, layers, pos, d_model]`, and the final-position scores `[runs]`."""
    inputs, noise = _inputs_of(item, corrupted)
    outs: list[Tensor] = []
    resid: list[Tensor] = []

    def keep_input(x, hook):
        resid.append(x.detach())
        outs.extend((x[:, None] * item.input_masks[:, :, None].to(x.dtype)).unbind(1))

    def keep_heads(x, hook):
        outs.extend(x.detach().unbind(2))

    def keep(x, hook):
        outs.append(x.detach())

    def keep_resid(x, hook):
        resid.append(x.detach())

    L = graph.n_layers
    hooks = list(noise) + [("blocks.0.hook_resid_pre", keep_input)]
    for layer in range(L):
        if layer:
            hooks.append((f"blocks.{layer}.hook_resid_pre", keep_resid))
        hooks += [(f"blocks.{layer}.attn.hook_result", keep_heads), (f"blocks.{layer}.hook_mlp_out", keep)]
    hooks.append((f"blocks.{L - 1}.hook_resid_post", keep_resid))
    with torch.no_grad(), edge_hooks(model), model.hooks(fwd_hooks=hooks):
        logits = model(inputs)
    scores = item.job.score(logits[:, item.job.final]).double()
    outs, resid = torch.stack(outs, 1), torch.stack(resid, 1)
    check_decomposition(model, outs, resid[:, -1])
    return outs, resid, scores


def check_decomposition(model, outs: Tensor, final: Tensor) -> None:
    """The graph assumes the final residual is the sum of the senders' outputs plus the attention
    biases; a block that scales or normalises its outputs into the stream breaks that: refuse."""
    bias = sum(block.attn.b_O.detach() for block in model.blocks)
    total = outs.sum(1) + bias.to(outs.dtype)
    err = float((total - final).abs().max())
    scale = float(final.abs().max()) or 1.0
    tol = 1e-4 if final.dtype == torch.float32 else 2e-2
    if err > tol * scale:
        raise NotImplementedError(
            f"edge attribution needs each block to add its attention and MLP outputs to the residual stream unchanged; "
            f"in this model ({type(model.blocks[0]).__name__}) the final residual differs from the sum of the senders' "
            f"outputs by {err:.3g} (of {scale:.3g}), e.g. residual multipliers or post-norms")


def patched_scores(model, graph: Graph, item: EdgeItem, clean_resid: Tensor, deltas: Callable[[int], Tensor],
                   receivers: list[int], batch_rows: int = 64) -> Tensor:
    """The metric with each receiver's input shifted, one row per entry of `receivers`.

    `deltas(i)` is the shift `[pos, d_model]` of row i's receiver input; everything after the
    receiver is recomputed, everything before it is the clean run's (the residual entering the
    receiver's block, `clean_resid[layer]`). Rows of one batch share a layer.
    """
    out = torch.empty(len(receivers), dtype=torch.float64)
    by_layer: dict[int, list[int]] = {}
    for i, r in enumerate(receivers):
        by_layer.setdefault(graph.receivers[r].layer, []).append(i)
    clean = item.job.clean
    ids = clean["input_ids"]
    ctx = model.lm_context(ids.shape[1], 0, clean.get("attention_mask"), clean.get("position_ids"),
                           clean_resid.dtype, input_ids=ids)
    with torch.no_grad(), edge_hooks(model):
        for layer, rows in by_layer.items():
            for lo in range(0, len(rows), batch_rows):
                chunk = rows[lo:lo + batch_rows]
                shift = torch.stack([deltas(i) for i in chunk]).to(clean_resid.dtype)  # [rows, pos, d_model]
                recs = [graph.receivers[receivers[i]] for i in chunk]
                x = clean_resid[layer][None].expand(len(chunk), -1, -1).clone()
                if layer == graph.n_layers:
                    x = x + shift
                else:
                    hooks = _shift_hooks(layer, recs, shift)
                    with model.hooks(fwd_hooks=hooks):
                        x = model.run_blocks(x, ctx, layer)
                logits = model.readout(x[:, item.job.final:item.job.final + 1])[:, 0]
                out[chunk] = item.job.score(logits).double().cpu()
    return out


def _shift_hooks(layer: int, recs, shift: Tensor) -> list:
    """Hooks adding row r's shift to its receiver's input (one head's q/k/v input, or the MLP's)."""
    hooks = []
    for kind in ("q", "k", "v", "mlp"):
        rows = [r for r, rec in enumerate(recs) if rec.kind == kind]
        if not rows:
            continue
        idx = torch.tensor(rows)
        heads = torch.tensor([recs[r].head for r in rows]) if kind != "mlp" else None

        def add(x, hook, idx=idx, heads=heads):
            x = x.clone()
            if heads is None:
                x[idx.to(x.device)] += shift[idx].to(x.device)
            else:
                x[idx.to(x.device), :, heads.to(x.device)] += shift[idx].to(x.device)
            return x

        name = f"blocks.{layer}.hook_mlp_in" if kind == "mlp" else f"blocks.{layer}.hook_{kind}_input"
        hooks.append((name, add))
    return hooks
