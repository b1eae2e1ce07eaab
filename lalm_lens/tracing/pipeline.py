"""The two steps of every trace: `prepare` -> `PreparedTrace` -> `finish` -> `TraceResult`.

Every trace — `causal_trace` on one item, each item of `trace_dataset`, the
sweeps of `sweeps.py`, a feature trace, a circuit's runs — is two steps around
its engine's patched runs: `prepare(model, spec, clean, answer, layout)` ->
`PreparedTrace` (the job, its labels, the engine chosen, the baseline and the
checks, computed once), then `finish(model, prepared, patched)` -> the
`TraceResult`. `TraceSpec` checks every argument before any model work.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Mapping, NamedTuple, Optional

import torch
from jaxtyping import Float
from torch import Tensor

from lalm_lens.inputs.prepared import PreparedInput
from lalm_lens.tracing.cells import (Cell, build_cells, check_indices, check_mode, check_state_layers, check_states,
                                    check_window, state_of)
from lalm_lens.tracing.checks import Checks, resolve_min_effect, run_checks
from lalm_lens.tracing.engines import Baseline, Engine, ReferenceEngine, TraceJob, as_engine
from lalm_lens.tracing.groups import final_position, non_audio_positions, special_positions, token_groups
from lalm_lens.tracing.interventions import Corruption, CorruptedRun, as_corruption, check_same_layout
from lalm_lens.tracing.metrics import Metric, as_metric, token_id
from lalm_lens.tracing.results import LayerTrace, TokenTrace, TraceResult

if TYPE_CHECKING:
    from lalm_lens.interface import LALM


def answer_token(model: "LALM", inp: Mapping, answer) -> tuple[int, str]:
    """The answer's token id and label (see `metrics.token_id` for how strings are read)."""
    token = token_id(model, inp, answer)
    label = answer if isinstance(answer, str) else (model.tokenizer.decode([token]) if model.tokenizer else str(token))
    return token, label


def input_groups(model: "LALM", inp: Mapping) -> list[str]:
    if isinstance(inp, PreparedInput):
        return token_groups(inp)
    ids = inp["input_ids"]
    groups = ["template"] * ids.shape[1]
    for i in model.audio_token_mask(ids)[0].nonzero()[:, 0].tolist():
        groups[i] = "audio"
    groups[final_position(inp)] = "final"
    return groups


class TraceSpec:
    """The checked settings of a trace (what a dataset run validates once, before its first item)."""

    def __init__(self, model: "LALM", *, mode="tokens", states="resid_post", layers=None, positions=None,
                 window=1, corruption="silence", metric=None, engine="fast", min_effect=None, lora=None):
        self.mode = check_mode(mode)
        self.states = check_states(model, states)
        self.layers = check_indices(layers, model.cfg.n_layers, "layer(s)", state_of(self.states).layers(model))
        self.positions = positions  # checked per item: they index its tokens
        if positions is not None:
            check_indices(positions, None, "position(s)", [])
        self.window = check_window(window)
        check_state_layers(model, self.states, self.layers, self.window)
        self.corruption: Corruption = as_corruption(corruption)
        self.metric: Metric = as_metric(metric)
        self.engine: Engine = as_engine(engine)
        self.min_effect = resolve_min_effect(min_effect, self.metric)
        self.lora = check_lora(model, lora)

    def settings(self) -> dict:
        """What produced a result, as JSON (compared when a dataset run resumes)."""
        out = dict(mode=self.mode, states=self.states, layers=self.layers, positions=self.positions,
                   window=self.window, corruption=self.corruption.to_dict(), metric=self.metric.to_dict(),
                   min_effect=self.min_effect)
        return out if self.lora is None else dict(out, lora=self.lora)


LORA_SETTINGS = ("on", "off", "clean")


def check_lora(model: "LALM", lora: Optional[str]) -> Optional[str]:
    """`lora=`: None (the model's own rule), or "on"/"off" in every run, "clean" in the clean run only."""
    if lora is None:
        return None
    if lora not in LORA_SETTINGS:
        raise ValueError(f"lora={lora!r}: use one of {LORA_SETTINGS} (or None for the model's own rule)")
    if not getattr(model, "has_lora", False):
        raise ValueError(f"lora={lora!r} needs a model with a LoRA adapter (Granite Speech); this model has none")
    return lora


@dataclass(frozen=True)
class Layout:
    """A trace's cells and how their scores are laid out in its result: `patched` viewed as `shape`
    (None: as the engine returns it, one per cell), the result's `positions` and their `labels` (None:
    the tokens there), its class, and what a sweep adds to the settings."""

    cells: list[Cell]
    positions: list[int] = field(default_factory=list)
    labels: Optional[list[str]] = None
    shape: Optional[tuple[int, ...]] = None
    result: type = LayerTrace
    settings: dict[str, Any] = field(default_factory=dict)


def spec_layout(spec: TraceSpec, positions: list[int], n_layers: int) -> Layout:
    """`causal_trace`'s layout: one cell per layer (x position, `mode="tokens"`)."""
    cells = build_cells(spec.mode, spec.layers, positions, spec.window, n_layers)
    if spec.mode == "tokens":
        return Layout(cells, positions, shape=(len(spec.layers), len(positions)), result=TokenTrace)
    return Layout(cells, positions, result=LayerTrace)


@dataclass(frozen=True)
class ItemLabels:
    """What a trace names besides its numbers: every position's token group, the answer, the corruption."""

    groups: list[str]
    answer: str
    corruption: str  # the corrupted run's description


class PreparedJob(NamedTuple):
    """An engine's job for one item, its labels and its layout (before any model run)."""

    job: TraceJob
    labels: ItemLabels
    layout: Layout


def on_device(model: "LALM", inputs: Mapping) -> dict[str, Tensor]:
    return {k: v.to(model.device) for k, v in inputs.items() if isinstance(v, torch.Tensor)}


def prepare_job(model: "LALM", spec: TraceSpec, clean: Mapping, answer,
                layout: Optional[Callable[[list[str]], Layout]] = None) -> PreparedJob:
    """Everything an engine needs for one item: the corruption built, the metric bound, the cells of
    `spec` — or of `layout(groups)`, a sweep's own."""
    if clean["input_ids"].ndim != 2 or clean["input_ids"].shape[0] != 1:
        raise ValueError(f"trace one item at a time (got input_ids of shape {tuple(clean['input_ids'].shape)}); "
                         "use trace_dataset for many")
    answer_id, answer_label = answer_token(model, clean, answer)
    groups = input_groups(model, clean)
    positions = check_indices(spec.positions, len(groups), "position(s)", non_audio_positions(groups))
    score = spec.metric.bind(model, clean, answer_id)
    corr: CorruptedRun = spec.corruption.apply(model, clean)
    check_same_layout(clean, corr.inputs)
    corr.inputs = on_device(model, corr.inputs)
    plan = spec_layout(spec, positions, model.cfg.n_layers) if layout is None else layout(groups)
    job = TraceJob(on_device(model, clean), corr, spec.states, plan.cells, final_position(clean), answer_id, score,
                   spec.lora)
    return PreparedJob(job, ItemLabels(groups, answer_label, corr.description), plan)


def pick_engine(model: "LALM", spec: TraceSpec, job: TraceJob) -> Engine:
    """The spec's engine, or the reference engine (warned) where it cannot honour the model's hooks."""
    reason = spec.engine.unsupported(model, job)
    if reason is None:
        return spec.engine
    warnings.warn(reason, stacklevel=3)
    return ReferenceEngine()


@dataclass
class PreparedTrace:
    """One item's trace before its patched runs: the job, labels and layout, the engine chosen, its
    baseline (the clean and corrupted runs) and the checks of that baseline — made by `prepare` only."""

    spec: TraceSpec
    clean: Mapping  # the input as given (a `PreparedInput` names its tokens)
    job: TraceJob
    labels: ItemLabels
    layout: Layout
    engine: Engine
    baseline: Baseline
    checks: Checks

    @property
    def n_tokens(self) -> int:
        return self.job.clean["input_ids"].shape[1]

    @property
    def work(self) -> int:
        """Rows x positions of the suffixes the fast engine runs (sizes `batch_items="auto"`)."""
        runs = self.baseline.corrupted_logits.shape[0]
        return sum(runs * (self.n_tokens - min(c.positions)) for c in self.job.cells)

    def patched(self, model: "LALM") -> Float[Tensor, "n_cells"]:
        """The engine's patched score of every cell (`trace_dataset` batches several items instead)."""
        return self.engine.patched(model, self.job, self.baseline)


def prepare(model: "LALM", spec: TraceSpec, clean: Mapping, answer,
            layout: Optional[Callable[[list[str]], Layout]] = None) -> PreparedTrace:
    """Step one of every trace: the job, the engine (checked against the model's hooks), the baseline and
    its checks."""
    job, labels, plan = prepare_job(model, spec, clean, answer, layout)
    engine = pick_engine(model, spec, job)
    base = engine.baseline(model, job)
    checks = run_checks(model, base.clean_logits, base.corrupted_logits, job.answer, base.clean_score,
                        base.corrupted_score, spec.min_effect)
    return PreparedTrace(spec, clean, job, labels, plan, engine, base, checks)


def trace_settings(model: "LALM", prep: PreparedTrace) -> dict:
    """The result's settings: the spec's, the run's (model, corruption, engine, the clip), the sweep's."""
    spec, clean = prep.spec, prep.clean
    meta = getattr(clean, "meta", {}) or {}
    seconds = (meta.get("audio_seconds") or [None])[0]
    settings = dict(spec.settings(), model=model.name_or_path, corruption=prep.labels.corruption,
                    corruption_kind=spec.corruption.to_dict()["kind"], engine=prep.engine.to_dict(),
                    audio_seconds=None if seconds is None or not len(seconds) else [float(seconds[0]), float(seconds[-1])],
                    duration=None if getattr(clean, "waveform", None) is None else len(clean.waveform) / clean.sampling_rate)
    return dict(settings, **prep.layout.settings)


def finish(model: "LALM", prep: PreparedTrace, patched: Float[Tensor, "n_cells"], **fields) -> TraceResult:
    """Step two of every trace: the result of `prep`'s patched scores (`fields`: a sweep's own)."""
    spec, clean, plan, base = prep.spec, prep.clean, prep.layout, prep.baseline
    str_tokens = clean.str_tokens[0] if isinstance(clean, PreparedInput) else []
    labels = plan.labels if plan.labels is not None else [str_tokens[p] if str_tokens else str(p) for p in plan.positions]
    metric = dict(spec.metric.to_dict(), describe=spec.metric.describe(), probability=spec.metric.probability)
    return plan.result(
        patched=patched if plan.shape is None else patched.view(*plan.shape), positions=plan.positions,
        token_labels=labels, clean=base.clean_score, corrupted=base.corrupted_score, layers=list(spec.layers),
        groups=dict(enumerate(prep.labels.groups)), states=spec.states, answer=prep.labels.answer,
        answer_token=prep.job.answer, metric=metric, checks=prep.checks, settings=trace_settings(model, prep),
        str_tokens=str_tokens,
        special_positions=special_positions(clean, model.tokenizer) if isinstance(clean, PreparedInput) else [],
        **fields)
