"""Several items as the rows of one LM batch, for edge attribution.

Each item's clean and corrupted inputs are embedded on their own (the audio encoder
and the corruption act there); the LM then runs every item — and every noise sample
of every corrupted item — as one right-padded batch. Causal attention hides the
padding from every real position, and the metric reads each row at its own answer
position, so each row's outputs and gradients are those of its item run alone.

Memory of the per-edge activation difference Δ (`[items, senders, pos, d_model]`):

    bytes(Δ) = B · S · W · d_model · b,   S = n_inputs + L (H + 1)

(B items of a batch, W its longest item, b bytes per value of the model's dtype);
forming it holds the clean and corrupted outputs too, `(2B + R) · S · W · d_model · b`
with R corrupted rows (noise samples). `max_delta_gib` bounds this by taking the
senders in chunks of `S_c` (each chunk re-runs the forwards and backwards: cost × S / S_c).
Qwen2-Audio-7B (L = H = 32, d = 4096, 750 audio + ~50 text positions, bf16): S = 1058,
Δ = 6.5 GiB per item and 19.4 GiB while forming it — within 80 GB beside the 15 GiB of
weights unchunked; `max_delta_gib=2` takes 4 chunks of ≤ 327 senders.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Optional

import torch
from jaxtyping import Float
from torch import Tensor

from lalm_lens.circuits.graph import Graph
from lalm_lens.circuits.runs import EdgeItem, check_decomposition, edge_hooks

GIB = 2 ** 30


def _pad_to(t: Tensor, n: int, dim: int) -> Tensor:
    """Right-pad `t` with zeros along `dim` to length `n`."""
    after = t.ndim - 1 - (dim % t.ndim)  # F.pad lists (left, right) pairs from the last axis back
    return torch.nn.functional.pad(t, [0, 0] * after + [0, n - t.shape[dim]])


@dataclass
class EdgeBatch:
    """Items as right-padded rows: their lengths, valid positions, answer positions and input masks."""

    items: list[EdgeItem]
    lengths: list[int]
    width: int
    valid: Tensor  # [B, W] bool: real positions
    masks: Tensor  # [B, n_inputs, W]: which positions each input node covers (0 on padding)

    @classmethod
    def of(cls, model, items: list[EdgeItem]) -> "EdgeBatch":
        lengths = [it.n_pos for it in items]
        width = max(lengths)
        dev = model.device
        valid = torch.zeros(len(items), width, dtype=torch.bool, device=dev)
        for b, n in enumerate(lengths):
            valid[b, :n] = True
        masks = torch.stack([_pad_to(it.input_masks.to(dev), width, -1) for it in items])
        return cls(items, lengths, width, valid, masks)

    def rows(self, corrupted: bool) -> list[int]:
        """The item of each row: one per item (clean), one per noise sample of each item (corrupted)."""
        return [b for b, it in enumerate(self.items) for _ in range(it.job.corrupted.n_runs if corrupted else 1)]

    def embed(self, model, corrupted: bool) -> Float[Tensor, "rows W d_model"]:
        """The residual entering block 0 of every row (zeros on padding)."""
        out = []
        with torch.no_grad():
            for it in self.items:
                if corrupted:
                    with model.hooks(fwd_hooks=it.job.corrupted.hooks()):
                        x = model(it.job.corrupted.batch(), stop_at_layer=0)
                else:
                    x = model(it.job.clean, stop_at_layer=0)
                out.append(_pad_to(x, self.width, 1))
        return torch.cat(out)

    def context(self, model, rows: list[int], dtype: torch.dtype):
        """Causal mask with each item's own padding (and the batch's), and each item's rotary positions."""
        masks, positions = [], []
        for b in rows:
            clean = self.items[b].job.clean
            ids, mask = clean["input_ids"], clean.get("attention_mask")
            pos = clean.get("position_ids")
            if pos is None:
                pos = model.rotary.positions(ids.shape[1], 0, ids, mask, model.device)
            positions.append(_pad_to(pos.to(model.device)[..., 0, :], self.width, -1))
            mask = torch.ones_like(ids) if mask is None else mask
            masks.append(_pad_to(mask[0].to(model.device).long(), self.width, 0))
        return model.lm_context(self.width, 0, torch.stack(masks), torch.stack(positions, -2), dtype)

    def scores(self, model, resid: Tensor, rows: list[int]) -> Tensor:
        """Each row's metric, read at its item's answer position from the final residual `[rows, W, d]`."""
        at = torch.tensor([self.items[b].job.final for b in rows], device=resid.device)
        logits = model.readout(resid[torch.arange(len(rows), device=resid.device), at][:, None])[:, 0]
        out = []
        for b in dict.fromkeys(rows):
            sel = [i for i, r in enumerate(rows) if r == b]
            out.append(self.items[b].job.score(logits[sel]))
        return torch.cat(out)

    def per_item(self, values: Tensor, rows: list[int]) -> Tensor:
        """Mean over each item's rows (noise samples): `[rows, ...]` -> `[B, ...]`."""
        index = torch.tensor(rows, device=values.device)
        out = torch.zeros((len(self.items), *values.shape[1:]), dtype=values.dtype, device=values.device)
        out.index_add_(0, index, values)
        counts = torch.bincount(index, minlength=len(self.items)).to(values.dtype)
        return out / counts.view(-1, *[1] * (values.ndim - 1))


def sender_hooks(graph: Graph) -> list[tuple[str, Optional[int], int]]:
    """For each non-input sender: the hook that writes it, its head (None: the MLP), its sender index."""
    n_in, out = len(graph.inputs), []
    for layer in range(graph.n_layers):
        base = n_in + layer * (graph.n_heads + 1)
        out += [(f"blocks.{layer}.attn.hook_result", h, base + h) for h in range(graph.n_heads)]
        out.append((f"blocks.{layer}.hook_mlp_out", None, base + graph.n_heads))
    return out


@dataclass
class BatchRun:
    """What one forward over the batch leaves: the chunk's sender outputs, the scores, and (on request)
    the residual entering each block and after the last, and the raw sender hook values."""

    outs: Tensor  # [rows, chunk senders, W, d_model]
    scores: Tensor  # [rows] float64
    embed: Tensor  # [rows, W, d_model]: the residual entering block 0
    resid: Optional[Tensor] = None  # [rows, L + 1, W, d_model]
    hook_values: Optional[dict[str, Tensor]] = None  # sender hook name -> [rows, W, (H,) d_model]


def batch_outputs(model, graph: Graph, batch: EdgeBatch, corrupted: bool, senders: range,
                  keep_resid: bool = False, keep_hooks: bool = False, check: bool = True) -> BatchRun:
    """One no-grad forward of the clean (or corrupted) rows, keeping the outputs of `senders` only."""
    rows = batch.rows(corrupted)
    x = batch.embed(model, corrupted)
    ctx = batch.context(model, rows, x.dtype)
    n_in, lo, hi = len(graph.inputs), senders.start, senders.stop
    outs: dict[int, Tensor] = {}
    resid: list[Tensor] = []
    hook_values: dict[str, Tensor] = {}
    total = torch.zeros_like(x) if check else None
    masks = batch.masks[rows].to(x.dtype)  # [rows, n_in, W]

    def keep_input(x, hook):
        resid.append(x.detach())
        for i in range(n_in):
            if check or lo <= i < hi:
                v = x.detach() * masks[:, i, :, None]
                if check:
                    total.add_(v)
                if lo <= i < hi:
                    outs[i] = v

    by_hook: dict[str, list[tuple[Optional[int], int]]] = {}
    for name, head, s in sender_hooks(graph):
        by_hook.setdefault(name, []).append((head, s))

    def keep(x, hook):
        x = x.detach()
        if keep_hooks:
            hook_values[hook.name] = x
        if check:
            total.add_(x.sum(2) if x.ndim == 4 else x)
        for head, s in by_hook[hook.name]:
            if lo <= s < hi:
                outs[s] = x if head is None else x[:, :, head]

    def keep_res(x, hook):
        resid.append(x.detach())

    L = graph.n_layers
    hooks = [("blocks.0.hook_resid_pre", keep_input)] + [(name, keep) for name in by_hook]
    if keep_resid:
        hooks += [(f"blocks.{layer}.hook_resid_pre", keep_res) for layer in range(1, L)]
    with torch.no_grad(), edge_hooks(model), model.hooks(fwd_hooks=hooks):
        final = model.run_blocks(x, ctx, 0)
        scores = batch.scores(model, final, rows).double()
    if check:
        check_decomposition(model, total[:, None], final)
    stacked = torch.stack([outs[s] for s in range(lo, hi)], 1) if hi > lo else x.new_zeros(len(rows), 0, *x.shape[1:])
    return BatchRun(stacked, scores, x, torch.stack(resid + [final], 1) if keep_resid else None,
                    hook_values if keep_hooks else None)


def batch_gradients(model, graph: Graph, batch: EdgeBatch, input_value: Tensor,
                    on_grad: Callable[[str, Tensor], None], sender_values: Optional[dict[str, Tensor]] = None) -> None:
    """Backpropagate the sum of the rows' metrics (each item's own), handing d metric / d (each receiver
    hook's input) `[B, W, (heads,) d_model]` to `on_grad(hook_name, grad)` as the backward reaches it.

    `input_value` `[B, W, d_model]` is the residual entering block 0; `sender_values` (hook name ->
    value) replace sender outputs in the forward while passing gradients straight through."""
    L = graph.n_layers
    rows = batch.rows(False)

    def take(x, hook):
        name = hook.name
        x.register_hook(lambda grad: on_grad(name, grad))
        return x

    def replace(x, hook):
        return x + (sender_values[hook.name].to(x.dtype) - x).detach()

    hooks = []
    for layer in range(L):
        hooks += [(f"blocks.{layer}.hook_{k}_input", take) for k in "qkv"] + [(f"blocks.{layer}.hook_mlp_in", take)]
    hooks.append((f"blocks.{L - 1}.hook_resid_post", take))
    if sender_values:
        hooks += [(name, replace) for name in sender_values]
    x = input_value.detach().clone().requires_grad_(True)
    ctx = batch.context(model, rows, x.dtype)
    with torch.enable_grad(), edge_hooks(model), model.hooks(fwd_hooks=hooks):
        final = model.run_blocks(x, ctx, 0)
        batch.scores(model, final, rows).sum().backward()


def sender_chunk(n_senders: int, batch: EdgeBatch, d_model: int, dtype: torch.dtype,
                 max_delta_gib: Optional[float]) -> int:
    """Senders per chunk so that Δ `[B, S_c, W, d_model]` stays under `max_delta_gib` (None: all at once)."""
    if max_delta_gib is None:
        return n_senders
    if isinstance(max_delta_gib, bool) or not isinstance(max_delta_gib, (int, float)) or not max_delta_gib > 0:
        raise ValueError(f"max_delta_gib must be a positive number of GiB, got {max_delta_gib!r}")
    per_sender = len(batch.items) * batch.width * d_model * (torch.finfo(dtype).bits // 8)
    return max(1, min(n_senders, math.floor(max_delta_gib * GIB / per_sender)))
