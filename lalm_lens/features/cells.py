"""Feature cells: restore clean SAE feature activations in the corrupted run, per (position, feature).

`causal_trace(model, clean, corruption, answer=..., states="blocks.1.hook_resid_post.hook_sae_acts_post",
features=[3, 7])` comes here (any `...hook_sae_acts_post` / `...hook_sae_acts_pre` of a spliced SAE or
transcoder). A cell writes the clean activations of one feature (`features=[f, ...]`) or of every feature
at once (`features=None`) into the corrupted run at that hook, at one position (`mode="tokens"`) or at
all `positions` together (`mode="layers"`), and scores the metric. A `Cell`'s unit index (`heads`) selects
the features: the axis after position, as it selects heads of a `[batch, pos, head, d]` state.

Engines. "reference": one hooked forward per cell — the definition. "fast": a feature patch at
LM layer l and position p changes the spliced hook's output only at (l, p) (an SAE is a position-wise
function), so each cell becomes a restore of that output with the value the SAE gives there, and the
core fast engine runs those as suffix rows. Where that does not hold (an SAE outside the LM's blocks,
several noise samples, a spliced state whose join reads another state, a head axis, user hooks the suffix
would cut) the trace warns why and runs the reference engine.
"""

from __future__ import annotations

import dataclasses
import warnings
from dataclasses import dataclass, field
from typing import Any, ClassVar, Optional, Sequence

import torch
from torch import Tensor
from transformer_lens.utilities import get_act_name

from lalm_lens.features.splice import SAESplice
from lalm_lens.tracing.cells import HEAD_STATES, POSITIONAL_STATES, Cell, check_indices, check_mode
from lalm_lens.tracing.checks import warn_if_ill_posed
from lalm_lens.tracing.engines import FastEngine, ReferenceEngine, as_engine
from lalm_lens.tracing.engines.base import Baseline, TraceJob, lora_for, restore_index, score_of
from lalm_lens.tracing.engines.join import NEEDS
from lalm_lens.tracing.groups import non_audio_positions
from lalm_lens.tracing.numbers import num
from lalm_lens.tracing.results import TraceResult

FEATURE_HOOKS = ("hook_sae_acts_post", "hook_sae_acts_pre")
CHUNK = 64  # fast-engine cells per call (each carries its own copy of the restored state, and the core
# engine copies prefix keys/values per item when it batches several)


def is_feature_state(states) -> bool:
    """Whether `states` names an SAE's feature hook (these traces) rather than a block state."""
    return isinstance(states, str) and states.rpartition(".")[2] in FEATURE_HOOKS


def feature_splice(model, states: str) -> SAESplice:
    """The spliced SAE whose feature hook `states` is (a clear error when it is not spliced)."""
    parent, _, leaf = states.rpartition(".")
    if leaf not in FEATURE_HOOKS:
        raise ValueError(f"states={states!r}: a feature trace restores {' or '.join(FEATURE_HOOKS)} of a spliced SAE")
    splice = model.hook_dict.get(parent)
    if not isinstance(splice, SAESplice):
        spliced = [n for n, m in model.hook_dict.items() if isinstance(m, SAESplice)]
        raise ValueError(f"states={states!r}: no SAE is spliced at {parent!r} (spliced: {spliced or 'none'}); "
                         "splice it first: model.add_sae(sae) or `with model.saes([sae]):`")
    return splice


def block_layer(name: str) -> Optional[int]:
    """The LM block a hook name is in (None outside `blocks.`)."""
    parts = name.split(".")
    return int(parts[1]) if parts[0] == "blocks" and len(parts) > 1 and parts[1].isdigit() else None


@dataclass
class FeatureTrace(TraceResult):
    """`patched[row, column]`: rows are `positions` (one per cell) or, with `together`, one row restoring all
    of them; columns are `features` (one per cell) or, when `features` is empty, one column for all."""

    hook: str = ""
    features: list[int] = field(default_factory=list)  # empty: every feature at once
    together: bool = False
    kind: ClassVar[str] = "features"

    def expected_shape(self) -> tuple[int, ...]:
        return (1 if self.together else len(self.positions), max(1, len(self.features)))

    def feature_label(self, column: int) -> str:
        return f"feature {self.features[column]}" if self.features else "all features"

    def position_label(self, position: int) -> str:
        """`index: token` in the LM, the index alone on another axis (the audio encoder's frames)."""
        label = self.token_labels[self.positions.index(position)] if position in self.positions else str(position)
        return f"{position}: {label}".replace("\n", "\\n") if label != str(position) else label

    def row_label(self, row: int) -> str:
        return "all positions" if self.together else self.position_label(self.positions[row])

    def top(self, n: int = 10) -> list[dict[str, Any]]:
        """The `n` cells of highest recovery: position (None: all together), feature (None: all), RR, score."""
        rec = self.recovery.nan_to_num(float("-inf")).flatten()
        order = rec.argsort(descending=True)[:n].tolist()
        cols = self.patched.shape[1]
        return [dict(position=None if self.together else self.positions[i // cols],
                     feature=self.features[i % cols] if self.features else None,
                     recovery=float(self.recovery.flatten()[i]), score=float(self.patched.flatten()[i]))
                for i in order]

    def to_dataframe(self):
        import pandas as pd

        rows = [dict(position=None if self.together else self.positions[r], token=None if self.together else
                     self.token_labels[r], feature=self.features[c] if self.features else None,
                     score=float(self.patched[r, c]), recovery=float(self.recovery[r, c]))
                for r in range(self.patched.shape[0]) for c in range(self.patched.shape[1])]
        return pd.DataFrame(rows)

    def summary(self) -> str:
        lines = self.header()
        best = self.top(3)
        if best and torch.isfinite(self.recovery).any():
            lines.append(f"restoring {self.hook} features: best cells " + "; ".join(
                f"{'all positions' if b['position'] is None else self.position_label(b['position'])}, "
                f"{'all features' if b['feature'] is None else 'feature ' + str(b['feature'])}: RR {num(b['recovery'])}"
                for b in best))
        else:
            lines.append("RR undefined (clean and corrupted scores are equal)")
        return "\n".join(lines)

    def numbers(self) -> dict[str, Any]:
        return dict(super().numbers(), hook=self.hook, features=self.features, top=self.top(10))

    def plot(self, ax=None, value: str = "recovery", title: Optional[str] = None):
        import matplotlib.pyplot as plt

        ax = ax or plt.subplots(figsize=(6, 4))[1]
        data = (self.recovery if value == "recovery" else self.patched).float().numpy()
        im = ax.imshow(data, aspect="auto", cmap="RdBu_r", vmin=-1 if value == "recovery" else None,
                       vmax=1 if value == "recovery" else None)
        ax.set_xticks(range(data.shape[1]), [self.feature_label(c) for c in range(data.shape[1])], rotation=90)
        ax.set_yticks(range(data.shape[0]), [self.row_label(r) for r in range(data.shape[0])])
        ax.figure.colorbar(im, ax=ax, label=value)
        ax.set_title(title or self.title(f"restoring {self.hook}"))
        return ax




def feature_cells(positions: Sequence[int], features: Optional[Sequence[int]], together: bool,
                  layer: int) -> list[Cell]:
    """One cell per (position or all positions, feature or all features); `heads` holds the feature."""
    rows = [tuple(positions)] if together else [(p,) for p in positions]
    cols = [None] if features is None else [(f,) for f in features]
    return [Cell((layer,), pos, feat) for pos in rows for feat in cols]


def _restore_features(clean: Tensor, cell: Cell):
    """A hook writing the clean feature activations of `cell` into a `[batch, pos, d_sae]` (or `[pos, d_sae]`)
    activation; a batch of several corrupted runs takes the clean item's rows for each."""
    pos, feats = restore_index(cell)

    def hook(act: Tensor, hook) -> Tensor:
        a = act.view(-1, *clean.shape[-2:]) if act.dim() == 2 else act
        c = clean[None] if clean.dim() == 2 else clean
        c = c.repeat(a.shape[0] // c.shape[0], *(1,) * (c.dim() - 1))
        if feats is None:
            a[:, pos] = c[:, pos].to(a.dtype)
        else:
            a[:, pos, feats] = c[:, pos, feats].to(a.dtype)
        return act

    return hook


def _splice_inputs(model, splice: SAESplice):
    """A forward pre-hook keeping what the splice reads in a run: its input and, for a transcoder, the source's."""
    seen = {}

    def pre(module, args):
        seen["x"] = args[0].detach()
        seen["source"] = None if module.source is None else module.source.last.detach()

    return seen, splice.register_forward_pre_hook(pre)


@torch.no_grad()
@dataclass
class FeatureBaseline(Baseline):
    """The baseline and the clean feature activations at the hook."""

    state: Tensor = None


def feature_baseline(model, job: TraceJob, splice: SAESplice) -> tuple[Baseline, dict]:
    """Clean run (keeping the feature hook) and corrupted run (keeping what the splice read)."""
    with lora_for(model, job, "clean"):
        logits, cache = model.run_with_cache(job.clean, names_filter=lambda n: n == job.states)
    seen, handle = _splice_inputs(model, splice)
    try:
        with lora_for(model, job, "corrupted"):
            corrupted = model.run_with_hooks(job.corrupted.batch(), fwd_hooks=job.corrupted.hooks())[:, job.final]
    finally:
        handle.remove()
    clean = logits[:, job.final]
    base = FeatureBaseline(clean[0], corrupted, score_of(job, clean), score_of(job, corrupted), state=cache[job.states])
    return base, seen


@torch.no_grad()
def reference_scores(model, job: TraceJob, base: Baseline) -> Tensor:
    """One hooked forward per cell: the clean feature activations written at the feature hook."""
    batch, noise = job.corrupted.batch(), job.corrupted.hooks()
    out = []
    for cell in job.cells:
        with lora_for(model, job, "corrupted"):
            logits = model.run_with_hooks(batch, fwd_hooks=noise + [(job.states, _restore_features(base.state, cell))])
        out.append(score_of(job, logits[:, job.final]))
    return torch.tensor(out, dtype=torch.float64)


def spliced_state(model, splice: SAESplice, layer: Optional[int]) -> tuple[Optional[str], Optional[str]]:
    """The block state the splice's output is (e.g. "resid_post"), or None and why the fast engine cannot use it."""
    if layer is None:
        return None, f"the SAE at {splice.name} is outside the language model's blocks"
    short = next((s for s in POSITIONAL_STATES if get_act_name(s, layer) == splice.name), None)
    if short is None or short in HEAD_STATES or NEEDS.get(short, ((), ()))[0]:
        return None, f"the fast engine restores {splice.name} only as part of another state"
    return short, None


@torch.no_grad()
def fast_scores(model, job: TraceJob, base: Baseline, seen: dict, splice: SAESplice, layer: Optional[int],
                engine: FastEngine) -> tuple[Optional[Tensor], Optional[str]]:
    """The cells through the core fast engine, each as a restore of the splice's output at its positions with
    the value the SAE gives there under the cell's feature patch; (None, why) where that is not exact."""
    short, why = spliced_state(model, splice, layer)
    if why is None and job.corrupted.n_runs != 1:
        why = f"the corruption has {job.corrupted.n_runs} noise samples (each would need its own restored value)"
    if why is None and seen.get("x") is None:
        why = f"the splice at {splice.name} did not run in the corrupted run"
    resid_job = dataclasses.replace(job, states=short, cells=[Cell((layer,), c.positions) for c in job.cells])
    if why is None:
        why = engine.unsupported(model, resid_job)
    if why is not None:
        return None, why
    inner = engine.baseline(model, resid_job)
    runs = inner.runs
    jobs, bases, scores = [], [], []
    for cell, resid_cell in zip(job.cells, resid_job.cells):
        pos = list(cell.positions)
        if splice.source is not None:
            splice.source.last = seen["source"][:, pos]
        sub_clean = base.state[:, pos]
        sub_cell = Cell(cell.layers, tuple(range(len(pos))), cell.heads)
        with model.hooks(fwd_hooks=[(job.states, _restore_features(sub_clean, sub_cell))]):
            value = splice(seen["x"][:, pos])  # [1, len(pos), d]
        state = runs.clean[splice.name].clone()
        state[pos] = value[0].to(state.dtype)
        unchanged = list(runs.unchanged)
        unchanged[layer] = torch.zeros_like(unchanged[layer])
        jobs.append(dataclasses.replace(resid_job, cells=[resid_cell]))
        cell_runs = dataclasses.replace(runs, clean={**runs.clean, splice.name: state}, unchanged=unchanged)
        bases.append(dataclasses.replace(inner, runs=cell_runs))
        if len(jobs) == CHUNK or resid_cell is resid_job.cells[-1]:  # bounded: each cell holds its own state
            scores += engine.patched_many(model, jobs, bases)
            jobs, bases = [], []
    return torch.cat(scores), None


def feature_trace(model, clean, corruption="silence", *, answer, states: str, features: Optional[Sequence[int]] = None,
                  metric=None, mode: str = "tokens", positions: Optional[Sequence[int]] = None, engine="fast",
                  min_effect: Optional[float] = None, lora: Optional[str] = None, layers=None, window: int = 1,
                  **moved) -> FeatureTrace:
    """Restore clean feature activations at `states` (a spliced SAE's feature hook), cell by cell.

    `features`: the features to restore one at a time (None: all of them at once). `mode="tokens"`: one
    position per cell; `"layers"`: all `positions` at once. `positions` default, for a hook in the LM, to
    every non-audio position (as `causal_trace`), elsewhere to every position of the hook's axis. The other
    arguments are `causal_trace`'s; engine "attribution" is refused (see `feature_attribution`).
    """
    from lalm_lens.tracing.checks import run_checks
    from lalm_lens.tracing.pipeline import Layout, PreparedTrace, TraceSpec, finish, prepare_job

    if moved:
        raise TypeError(f"feature_trace() got unexpected keyword argument(s) {sorted(moved)}")
    if layers is not None or window != 1:
        raise ValueError(f"states={states!r} names one hook, so layers= and window= do not apply to a feature trace")
    splice = feature_splice(model, states)
    mode = check_mode(mode)
    d_sae = splice.sae.cfg.d_sae
    feats = None if features is None else check_indices(features, d_sae, "feature(s)", [])
    if as_engine(engine).name == "attribution":
        raise ValueError("engine='attribution' for features: use lalm_lens.features.feature_attribution "
                         "(gradient x Δ per feature and position)")
    spec = TraceSpec(model, mode=mode, metric=metric, engine=engine, min_effect=min_effect, lora=lora,
                     corruption=corruption)
    layer = block_layer(splice.name)
    spec.states, spec.layers = states, [] if layer is None else [layer]
    job, labels, _ = prepare_job(model, spec, clean, answer, layout=lambda groups: Layout([]))
    job.states = states
    base, seen = feature_baseline(model, job, splice)
    acts = base.state
    seq = job.clean["input_ids"].shape[1]
    in_lm = acts.dim() == 3 and acts.shape[:2] == (1, seq)
    axis = acts.shape[-2]
    default = non_audio_positions(labels.groups) if in_lm else range(axis)
    positions = check_indices(positions, axis, "position(s)", default)
    job.cells = feature_cells(positions, feats, mode == "layers", -1 if layer is None else layer)
    used = spec.engine
    patched = None
    if isinstance(spec.engine, FastEngine):
        patched, why = fast_scores(model, job, base, seen, splice, layer, spec.engine)
        if patched is None:
            warnings.warn(f"feature trace at {states}: {why}, so this trace uses the reference engine", stacklevel=3)
            used = ReferenceEngine()
    if patched is None:
        patched = reference_scores(model, job, base)
    rows = 1 if mode == "layers" else len(positions)
    str_tokens = getattr(clean, "str_tokens", None)
    toks = str_tokens[0] if str_tokens is not None and in_lm else None
    plan = Layout(job.cells, positions, [toks[p] if toks else str(p) for p in positions], (rows, -1), FeatureTrace,
                  dict(features=feats))
    checks = run_checks(model, base.clean_logits, base.corrupted_logits, job.answer, base.clean_score,
                        base.corrupted_score, spec.min_effect)
    prep = PreparedTrace(spec, clean, job, labels, plan, used, base, checks)
    result = finish(model, prep, patched, hook=states, features=feats or [], together=mode == "layers")
    warn_if_ill_posed(result.checks, f"the feature trace of {result.answer!r}")
    return result


def feature_page(result: FeatureTrace, audio):
    """The page of a feature trace: the trace's header and its best cells as a table."""
    import html

    from lalm_lens.pages.common import trace_page

    page = trace_page(result, audio, f"restoring features of {result.hook}, one (position, feature) per cell")
    rows = "".join(f"<tr><td>{html.escape(result.row_label(result.positions.index(c['position'])) if c['position'] is not None else 'all positions')}</td>"
                   f"<td>{'all' if c['feature'] is None else c['feature']}</td><td>{c['recovery']:.4g}</td>"
                   f"<td>{c['score']:.4g}</td></tr>" for c in result.top(20))
    page.html(f"<table><tr><th>position</th><th>feature</th><th>RR</th><th>score</th></tr>{rows}</table>")
    return page
