"""The fast exact engine: re-run only what a patch can change.

A patch at layer l and positions P (first position i0) cannot change any
position < i0 (causal attention) nor anything below layer l. So a cell only
needs positions >= i0 from its first patched layer up, attending to the
corrupted run's keys/values for the prefix (`PrefixKV`, never copied per row
when rows share it). Cells — of one item or of several — run as rows of one
batch; each row joins at its own first layer from the corrupted residual
stream there, and the batch stays under `max_batch_tokens` rows x suffix
positions. Rows of different lengths are right-padded (causality hides the pad).

The clean and corrupted runs are plain forwards of the model (every user hook
fires as in a plain forward); the suffixes call the model's own pieces
(`run_blocks`, `readout`, its rotary tables). Where the user has hooks on the
blocks a suffix re-runs, the engine cannot honour them (they would see partial
sequences) and says so: the trace falls back to the reference engine. Which hooks
those are is declared by module (`RERUN_AFTER_BLOCKS`, `AUDIO_SIDE`), not read
from hook names. Clean states are written back with `restoring`, one hook per
suffix layer.
Three exact savings: a cell whose leading patches restore a state the
corruption never changed starts later (or is the corrupted run itself); a cell
restoring a state that settles its layer (`resid_post`, `resid_mid`, `mlp_out`,
`attn_out`) starts at the next block, or at the last layer only reads out the
answer position (`join.py`); and the last block runs at the answer position
only (`answer_layer.py`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Optional

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint
from transformer_lens.utilities import get_act_name

from lalm_lens.components.kv_cache import KVCache
from lalm_lens.components.masks import LMContext, additive, allowed_keys
from lalm_lens.tracing.cells import Cell
from lalm_lens.tracing.engines.answer_layer import SAFE_STATES, answer_only
from lalm_lens.tracing.engines.base import (Baseline, Engine, HookFn, TraceJob, lora_for, restore_index, restoring,
                                            score_of)
from lalm_lens.tracing.engines.join import block_output, joins_after, kept_names
from lalm_lens.tracing.engines.prefix import PrefixKV

if TYPE_CHECKING:
    from lalm_lens.interface import LALM

DEFAULT_MAX_BATCH_TOKENS = 16384
PAD_SLACK = 0.75  # a suffix joins a batch if it is at least this fraction of the batch's longest
# Which user hooks the engine honours, by the model's modules: a suffix re-runs the blocks from its first one
# and these (a hook inside them would see partial sequences: the trace falls back to the reference engine) ...
RERUN_AFTER_BLOCKS = ("ln_final",)
# ... and the noise shortcut (encode once, add each sample) skips these (a hook inside them keeps the hooked run).
AUDIO_SIDE = ("audio_encoder", "audio_projector", "hook_audio_embeds")


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


@dataclass
class FastBaseline(Baseline):
    """The baseline and what the suffixes of its cells read (`ItemRuns`)."""

    runs: ItemRuns = None


def hooked_in(model: "LALM", modules: Iterable[nn.Module]) -> list[str]:
    """The names of the hook points inside `modules` that hold hooks (in the model's order)."""
    inside = {id(m) for module in modules for m in module.modules() if isinstance(m, HookPoint)}
    return [name for name, hp in model.hook_dict.items() if id(hp) in inside and hp.has_hooks()]


def modules_named(model: "LALM", names: tuple[str, ...]) -> list[nn.Module]:
    return [getattr(model, n) for n in names if getattr(model, n, None) is not None]


def _plain_run(model: "LALM", inputs, names: set[str], extra_hooks=(), kv_cache=None):
    """A plain forward (user hooks fire as usual) keeping the activations in `names`."""
    with model.hooks(fwd_hooks=list(extra_hooks)):
        return model.run_with_cache(inputs, kv_cache=kv_cache, names_filter=lambda name: name in names)


@dataclass
class FastEngine(Engine):
    """Same numbers as the reference engine (float32 within 1e-5), a fraction of the FLOPs."""

    max_batch_tokens: int = DEFAULT_MAX_BATCH_TOKENS
    name = "fast"

    def to_dict(self) -> dict:
        return {"name": self.name, "max_batch_tokens": self.max_batch_tokens}

    def unsupported(self, model: "LALM", job: TraceJob) -> Optional[str]:
        start = min(c.layers[0] for c in job.cells)
        blocking = hooked_in(model, [*model.blocks[start:], *modules_named(model, RERUN_AFTER_BLOCKS)])
        if blocking:
            shown = ", ".join(blocking[:3]) + (f" and {len(blocking) - 3} more" if len(blocking) > 3 else "")
            return (f"hook(s) on {shown} would see partial sequences in the fast engine's suffix runs, "
                    "so this trace uses the reference engine")
        return None

    # ------------------------------------------------------------ clean and corrupted runs
    @torch.no_grad()
    def baseline(self, model: "LALM", job: TraceJob) -> FastBaseline:
        L = model.cfg.n_layers
        states = job.state_names(L)
        resid = [get_act_name("resid_pre", layer) for layer in range(L)] + [get_act_name("resid_post", L - 1)]
        clean_extra, corr_extra = kept_names(job.states, L)
        with lora_for(model, job, "clean"):
            logits, clean_cache = _plain_run(model, job.clean, set(states) | clean_extra | {"hook_audio_embeds"})
        clean_logits = logits[:, job.final]
        corr = job.corrupted
        kv = KVCache(L)
        inputs, hooks = corr.batch(), corr.hooks()
        audio = clean_cache.cache_dict.get("hook_audio_embeds")
        if corr.on_audio_vectors and audio is not None and not hooked_in(model, modules_named(model, AUDIO_SIDE)):
            # the encoder's output is the clean one: encode once, the corruption adds its noise (no hooks to honour)
            inputs, hooks = corr.with_audio_vectors(audio), []
        with lora_for(model, job, "corrupted"):
            logits, corr_cache = _plain_run(model, inputs, set(states) | set(resid) | corr_extra, hooks, kv)
        corr_logits = logits[:, job.final]
        first = min(min(c.positions) for c in job.cells)
        clean_ids = job.clean["input_ids"]
        positions = job.clean.get("position_ids")
        if positions is None:
            positions = model.rotary.positions(clean_ids.shape[1], 0, clean_ids, job.clean.get("attention_mask"),
                                               model.device)
        mask = job.clean.get("attention_mask")
        runs = ItemRuns(
            clean={name: clean_cache[name][0] for name in set(states) | clean_extra if name in clean_cache.cache_dict},
            resid_pre=[corr_cache[name][:, first:] for name in resid],
            corrupted={name: corr_cache[name][:, first:] for name in corr_extra},
            keys=kv.keys, values=kv.values,
            positions=positions.to(model.device)[..., 0, :],
            key_valid=None if mask is None else mask[0].bool().to(model.device),
            first=first,
            unchanged=[(corr_cache[name] == clean_cache[name]).flatten(2).all(-1).all(0)
                       if name in corr_cache.cache_dict else None for name in states],  # None: no such state there
            n_runs=corr.n_runs,
        )
        return FastBaseline(clean_logits[0], corr_logits, score_of(job, clean_logits), score_of(job, corr_logits),
                            runs=runs)

    # ------------------------------------------------------------ patched runs
    @torch.no_grad()
    def patched(self, model: "LALM", job: TraceJob, base: FastBaseline) -> Float[Tensor, "n_cells"]:
        return self.patched_many(model, [job], [base])[0]

    @torch.no_grad()
    def patched_many(self, model: "LALM", jobs: list[TraceJob], bases: list[FastBaseline]) -> list[Tensor]:
        outs = [torch.full((len(j.cells),), b.corrupted_score, dtype=torch.float64) for j, b in zip(jobs, bases)]
        groups, readouts = [], []
        L = model.cfg.n_layers
        for j, (job, base) in enumerate(zip(jobs, bases)):
            after = joins_after(job.states, model)
            for c, cell in enumerate(job.cells):
                layers = effective_layers(cell.layers, cell.positions, base.runs)
                if not layers:  # the cell is the corrupted run itself
                    continue
                g = Group(j, c, layers, cell.positions, cell.heads, min(cell.positions), job.final, layers[0] + after)
                if g.join < L:
                    groups.append(g)
                elif job.final in g.positions:  # after the last block only the answer position is read
                    readouts.append(g)
        if readouts:  # (a patch after the last block elsewhere leaves the corrupted run)
            with lora_for(model, jobs[0], "corrupted"):
                values = run_readouts(model, jobs, [b.runs for b in bases], readouts)
            for g, value in zip(readouts, values):
                outs[g.item][g.cell] = value
        # longest suffixes first; a batch holds suffixes within `PAD_SLACK` of its longest (little padding)
        # and stays under the budget of rows x positions
        width = lambda g: bases[g.item].runs.length - g.i0  # noqa: E731
        groups.sort(key=lambda g: (-width(g), g.item, g.i0))
        batch: list[Group] = []
        for g in groups + [None]:
            if g is not None:
                rows = sum(bases[x.item].runs.n_runs for x in batch + [g])
                if not batch or (rows * width(batch[0]) <= self.max_batch_tokens
                                 and width(g) >= PAD_SLACK * width(batch[0])):
                    batch.append(g)
                    continue
            if batch:  # (none when every cell was settled by a readout or left the corrupted run)
                with lora_for(model, jobs[0], "corrupted"):  # one trace's jobs share their settings
                    values = run_suffixes(model, jobs, [b.runs for b in bases], batch)
                for grp, value in zip(batch, values):
                    outs[grp.item][grp.cell] = value
            batch = [g] if g is not None else []
        return outs


def effective_layers(layers: tuple[int, ...], positions: tuple[int, ...], runs: ItemRuns) -> tuple[int, ...]:
    """A cell's layers without its leading no-op patches.

    Up to a cell's first layer the patched run is the corrupted run, so where the
    clean state equals the corrupted one there (always so for `resid_pre` at layer
    0 on text tokens, and at every layer before the audio), restoring it changes
    nothing and the cell effectively starts one layer later.
    """
    layers = list(layers)
    while layers and bool(runs.unchanged[layers[0]][list(positions)].all()):
        layers.pop(0)
    return tuple(layers)


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
