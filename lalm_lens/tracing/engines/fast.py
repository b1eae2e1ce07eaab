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
only (`answer_layer.py`). The suffix rows themselves are built and run in `suffix.py`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Iterable, Optional

import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint
from transformer_lens.utilities import get_act_name

from lalm_lens.components.kv_cache import KVCache
from lalm_lens.tracing.engines.base import Baseline, Engine, TraceJob, lora_for, score_of
from lalm_lens.tracing.engines.join import joins_after, kept_names
from lalm_lens.tracing.engines.suffix import Group, ItemRuns, run_readouts, run_suffixes

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
