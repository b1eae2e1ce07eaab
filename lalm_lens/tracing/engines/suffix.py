"""The rows the fast engine re-runs: what one item's runs leave (`ItemRuns`), one cell's rows
(`Group`), and one batch of suffixes (`SuffixBatch`, `run_suffixes`; `run_readouts` for cells
settled after the last block).

A batch's rows are cells of one or several items, each re-running positions >= its first
patched position from the block it joins at, attending to its item's corrupted keys/values
for the prefix (`PrefixKV`); rows are right-padded to the batch's widest suffix, and the
mask hides the padding and every prefix slot at or after the row's own first position.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor

from lalm_lens.components.masks import LMContext, additive, allowed_keys
from lalm_lens.tracing.cells import Cell
from lalm_lens.tracing.engines.answer_layer import SAFE_STATES, answer_only
from lalm_lens.tracing.engines.base import HookFn, TraceJob, restore_index, restoring
from lalm_lens.tracing.engines.join import block_output
from lalm_lens.tracing.engines.prefix import PrefixKV

if TYPE_CHECKING:
    from lalm_lens.interface import LALM


@dataclass
class ItemRuns:
    """What one item's clean and corrupted runs leave for the suffixes (batch axes dropped where single)."""

    clean: dict[str, Float[Tensor, "pos ..."]]  # the traced state of the clean run (and what joins need) per hook name
    resid_pre: list[Float[Tensor, "n_runs suffix d_model"]]  # corrupted, per layer and after the last, from `first`
    corrupted: dict[str, Float[Tensor, "n_runs suffix ..."]]  # what joins need of the corrupted run per hook name
    keys: list[Float[Tensor, "n_runs pos n_kv_heads d_head"]]  # corrupted, per layer
    values: list[Float[Tensor, "n_runs pos n_kv_heads d_head"]]
    positions: Int[Tensor, "... pos"]  # rotary position ids (one or three streams)
    key_valid: Optional[Bool[Tensor, "pos"]]  # the item's attention mask
    first: int  # the first position any cell restores
    unchanged: list[Bool[Tensor, "pos"]]  # per layer: the state equal bitwise in the clean and every corrupted run
    n_runs: int

    @property
    def length(self) -> int:
        return self.keys[0].shape[1]


@dataclass
class Group:
    """One cell of one item: `n_runs` rows that start at `layers[0]` and re-run positions >= i0."""

    item: int
    cell: int
    layers: tuple[int, ...]
    positions: tuple[int, ...]
    heads: Optional[tuple[int, ...]]
    i0: int
    final: int  # the item's answer position
    join: int  # the block its rows start at (`layers[0]`, or the next one: `join.py`; n_layers: read out only)



def joined_resid(model: "LALM", states: str, item: ItemRuns, g: Group) -> Float[Tensor, "n_runs suffix d_model"]:
    """`[n_runs, T - i0, d_model]`: the residual entering block `g.join` for the group's rows."""
    x = item.resid_pre[g.join][:, g.i0 - item.first:]
    if g.join == g.layers[0]:  # the patch is inside this block (its hooks restore it)
        return x
    pos = torch.tensor(g.positions, device=x.device)
    x = x.clone()
    x[:, pos - g.i0] = block_output(model, states, item.clean, item.corrupted, item.first, g.layers[0], pos,
                                    item.n_runs).to(x.dtype)
    return x


def run_readouts(model: "LALM", jobs: list[TraceJob], runs: list[ItemRuns], groups: list[Group]) -> list[float]:
    """The metric of cells whose first patch settles the last block: `readout` of the answer position."""
    finals = []
    for g in groups:
        item = runs[g.item]
        at = torch.tensor([g.final], device=item.resid_pre[0].device)
        finals.append(block_output(model, jobs[g.item].states, item.clean, item.corrupted, item.first,
                                   g.layers[0], at, item.n_runs)[:, 0])
    logits = model.readout(torch.cat(finals)[:, None])[:, 0]
    out, row = [], 0
    for g, final in zip(groups, finals):
        out.append(jobs[g.item].score(logits[row : row + len(final)]).double().mean().item())
        row += len(final)
    return out


def _pad_to(t: Tensor, n: int, dim: int) -> Tensor:
    """Right-pad `t` with zeros along `dim` to length `n`."""
    if t.shape[dim] == n:
        return t
    shape = list(t.shape)
    shape[dim] = n - t.shape[dim]
    return torch.cat([t, t.new_zeros(shape)], dim=dim)


class SuffixBatch:
    """The rows of one batch of cells: who they are, and their masks, rotary tables and prefixes."""

    def __init__(self, model: "LALM", runs: list[ItemRuns], groups: list[Group]):
        self.groups = sorted(groups, key=lambda g: g.join)  # rows join in this order
        dev = model.device
        self.width = max(runs[g.item].length - g.i0 for g in groups)
        self.prefix_len = max(g.i0 for g in groups)
        row_groups = [g for g in self.groups for _ in range(runs[g.item].n_runs)]
        self.run_of = torch.tensor([s for g in self.groups for s in range(runs[g.item].n_runs)], device=dev)
        self.starts = [g.join for g in row_groups]
        self.answer_at = torch.tensor([g.final - g.i0 for g in row_groups], device=dev)
        # a row reads the corrupted cache of its (item, run) up to `prefix_len`; the mask hides slots >= its i0
        prefixes = list(dict.fromkeys((g.item, s) for g in self.groups for s in range(runs[g.item].n_runs)))
        self.prefixes = prefixes
        index = {p: k for k, p in enumerate(prefixes)}
        self.row_prefix = torch.tensor([index[(g.item, s)] for g in self.groups
                                        for s in range(runs[g.item].n_runs)], device=dev)
        self._prefix_kv = None
        self.mask = self._mask(model, runs, row_groups)
        positions = torch.stack([_pad_to(runs[g.item].positions[..., g.i0:], self.width, -1) for g in row_groups], -2)
        self.rope = model.rotary.cos_sin(positions, runs[0].resid_pre[0].dtype)

    def _mask(self, model: "LALM", runs: list[ItemRuns], row_groups: list[Group]
              ) -> Float[Tensor, "rows 1 suffix keys"]:
        """`[rows, 1, suffix, prefix + suffix]`: a row sees its own prefix slots and, causally, its suffix."""
        dev, P, S = model.device, self.prefix_len, self.width
        q, slots = torch.arange(S, device=dev), torch.arange(P, device=dev)
        per_start: dict[tuple[int, int], Tensor] = {}  # groups of one item and first position share a mask
        for g in self.groups:
            if (g.item, g.i0) in per_start:
                continue
            item = runs[g.item]
            valid = item.key_valid if item.key_valid is not None else torch.ones(item.length, dtype=torch.bool, device=dev)
            q_abs, k_abs = g.i0 + q, torch.cat([slots, g.i0 + q])
            k_ok = torch.cat([(slots < g.i0) & _pad_to(valid[: g.i0], P, 0), _pad_to(valid[g.i0:], S, 0)])
            causal = allowed_keys(q_abs, k_abs, causal=True, sliding_window=model.cfg.sliding_window)
            per_start[(g.item, g.i0)] = causal & k_ok[None, :]
        allowed = torch.stack([per_start[(g.item, g.i0)] for g in row_groups])
        return additive(allowed, runs[0].resid_pre[0].dtype)[:, None]

    def prefix(self, runs: list[ItemRuns], n_rows: int) -> PrefixKV:
        """Prefix keys/values (every layer) of the first `n_rows` rows."""
        if self._prefix_kv is None:
            items = {i for i, _ in self.prefixes}
            P = self.prefix_len
            if len(items) == 1:  # one item: its own cache, a view, no copy
                item = runs[next(iter(items))]
                keys = [k[:, :P] for k in item.keys]
                values = [v[:, :P] for v in item.values]
            else:
                keys = [torch.stack([_pad_to(runs[i].keys[layer][s, :P], P, 0) for i, s in self.prefixes])
                        if layer >= self.starts[0] else None for layer in range(len(runs[0].keys))]
                values = [torch.stack([_pad_to(runs[i].values[layer][s, :P], P, 0) for i, s in self.prefixes])
                          if layer >= self.starts[0] else None for layer in range(len(runs[0].values))]
            self._prefix_kv = PrefixKV(keys, values, self.row_prefix)
        return self._prefix_kv.rows(n_rows)


def _restore(runs: list[ItemRuns], batch: SuffixBatch, layer: int, name: str, n_rows: int,
             only_answer: bool = False) -> Optional[HookFn]:
    """A hook writing the clean state back for the rows patched at `layer` (None: no row is)."""
    rows, pos, heads, values = [], [], [], []
    row = 0
    for g in batch.groups:
        item = runs[g.item]
        if row >= n_rows:
            break
        if layer in g.layers:
            p, h = restore_index(Cell(g.layers, g.positions, g.heads))
            clean = item.clean[name]
            vals = clean[p] if h is None else clean[p, h]
            rel = p - g.i0
            if only_answer:  # the last block runs at the answer position only: query index 0
                keep = p == g.final
                rel, vals, h = torch.zeros_like(rel[keep]), vals[keep.to(vals.device)], None if h is None else h[keep]
            for s in range(item.n_runs):
                rows.append(torch.full_like(rel, row + s))
                pos.append(rel)
                heads.append(h)
                values.append(vals)
        row += item.n_runs
    if not rows or sum(r.numel() for r in rows) == 0:
        return None
    dev = runs[0].keys[0].device
    r_idx, p_idx = torch.cat(rows).to(dev), torch.cat(pos).to(dev)
    h_idx = None if heads[0] is None else torch.cat(heads).to(dev)
    vals = torch.cat(values)

    def hook(act: Tensor, hook) -> Tensor:
        if h_idx is None:
            act[r_idx, p_idx] = vals.to(act.dtype)
        else:
            act[r_idx, p_idx, h_idx] = vals.to(act.dtype)
        return act

    return hook


def run_suffixes(model: "LALM", jobs: list[TraceJob], runs: list[ItemRuns], groups: list[Group]) -> list[float]:
    """The metric of each group's cell (mean over its rows), in the order of `groups`."""
    batch = SuffixBatch(model, runs, groups)
    states = jobs[0].states
    L = model.cfg.n_layers
    shortcut = states in SAFE_STATES
    x: Optional[Tensor] = None
    n_rows = 0
    start = batch.starts[0]
    for layer in range(start, L):
        joining = [g for g in batch.groups if g.join == layer]
        if joining:
            new = [_pad_to(joined_resid(model, states, runs[g.item], g), batch.width, 1) for g in joining]
            x = torch.cat(new if x is None else [x, *new])  # a new tensor: the restores write into it
            n_rows += sum(runs[g.item].n_runs for g in joining)
        name = jobs[0].state.hook(layer)
        last = shortcut and layer == L - 1
        ctx = LMContext(batch.mask[:n_rows], tuple(t[:n_rows] for t in batch.rope))
        prefix = batch.prefix(runs, n_rows)
        if last and states == "resid_pre":  # restored at every position before their keys are projected
            with restoring(model, name, _restore(runs, batch, layer, name, n_rows)):
                x = model.hook_dict[name](x)
            restore = None
        else:
            restore = _restore(runs, batch, layer, name, n_rows, only_answer=last)
        with restoring(model, name, restore):
            if last:
                x = answer_only(model.blocks[layer], x, batch.answer_at[:n_rows], ctx, prefix)
            else:
                x = model.run_blocks(x, ctx, layer, layer + 1, prefix)
    final = x[:, 0] if shortcut else x[torch.arange(n_rows, device=x.device), batch.answer_at]
    logits = model.readout(final[:, None])[:, 0]
    out, row = [], 0
    for g in batch.groups:
        n = runs[g.item].n_runs
        out.append(jobs[g.item].score(logits[row : row + n]).double().mean().item())
        row += n
    order = {id(g): v for g, v in zip(batch.groups, out)}
    return [order[id(g)] for g in groups]
