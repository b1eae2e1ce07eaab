"""`causal_trace`: the paper's clean / corrupted / patched runs on one item.

`mode="tokens"` restores one position at a time (cell = layer x position, a
`TokenTrace`); `mode="layers"` restores all `positions` at once at each layer
(a `LayerTrace`). For `attn_out` and `mlp_out` (or any state) `window=w`
restores layers `[l - w//2, l + ceil(w/2))` clipped at the ends, as ROME does.
Every argument is checked before any model work; the result carries the
checks that say whether its recovery rates mean anything.
"""

from __future__ import annotations

import warnings
from typing import Callable, Mapping, Optional, Sequence, Union

import torch

from lalm_lens.inputs.prepared import PreparedInput
from lalm_lens.tracing.cells import build_cells, check_indices, check_mode, check_states, check_window
from lalm_lens.tracing.checks import resolve_min_effect, run_checks, warn_if_ill_posed
from lalm_lens.tracing.engines import Engine, ReferenceEngine, TraceJob, as_engine
from lalm_lens.tracing.groups import final_position, non_audio_positions, special_positions, token_groups
from lalm_lens.tracing.interventions import Corruption, CorruptedRun, as_corruption, check_same_layout
from lalm_lens.tracing.metrics import Metric, as_metric, token_id
from lalm_lens.tracing.results import LayerTrace, TokenTrace, TraceResult

MOVED = {  # 0.1 keywords -> what replaced them
    "noise_scale": "corruption=GaussianNoise(scale=...)", "n_samples": "corruption=GaussianNoise(n_samples=...)",
    "seed": "the corruption's seed, e.g. GaussianNoise(seed=...) or WhiteNoise(seed=...)",
    "snr_db": "corruption=WhiteNoise(snr_db=...)", "swap_audio": "corruption=Swap(audio)",
    "method": "engine='attribution'", "max_batch_tokens": "engine=FastEngine(max_batch_tokens=...)",
    "corrupted": "the third argument, corruption= (a dict of tensors or Given(inputs))",
}


def refuse_moved(kwargs: dict) -> None:
    for key in kwargs:
        if key in MOVED:
            raise TypeError(f"{key}= is no longer a causal_trace argument: use {MOVED[key]}")
    if kwargs:
        raise TypeError(f"unexpected argument(s) {sorted(kwargs)}")


def answer_token(model, inp: Mapping, answer) -> tuple[int, str]:
    """The answer's token id and label (see `metrics.token_id` for how strings are read)."""
    token = token_id(model, inp, answer)
    label = answer if isinstance(answer, str) else (model.tokenizer.decode([token]) if model.tokenizer else str(token))
    return token, label


def input_groups(model, inp: Mapping) -> list[str]:
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

    def __init__(self, model, *, mode="tokens", states="resid_post", layers=None, positions=None, window=1,
                 corruption="silence", metric=None, engine="fast", min_effect=None, lora=None):
        self.mode = check_mode(mode)
        self.states = check_states(model, states)
        self.layers = check_indices(layers, model.cfg.n_layers, "layer(s)", range(model.cfg.n_layers))
        self.positions = positions  # checked per item: they index its tokens
        if positions is not None:
            check_indices(positions, None, "position(s)", [])
        self.window = check_window(window)
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


def check_lora(model, lora: Optional[str]) -> Optional[str]:
    """`lora=`: None (the model's own rule), or "on"/"off" in every run, "clean" in the clean run only."""
    if lora is None:
        return None
    if lora not in LORA_SETTINGS:
        raise ValueError(f"lora={lora!r}: use one of {LORA_SETTINGS} (or None for the model's own rule)")
    if not getattr(model, "has_lora", False):
        raise ValueError(f"lora={lora!r} needs a model with a LoRA adapter (Granite Speech); this model has none")
    return lora


def prepare_job(model, spec: TraceSpec, clean: Mapping, answer, cells=None) -> tuple[TraceJob, dict]:
    """Everything an engine needs for one item (the corruption built, cells chosen — or `cells(groups)`
    for a sweep of its own), and the labels."""
    if clean["input_ids"].ndim != 2 or clean["input_ids"].shape[0] != 1:
        raise ValueError(f"trace one item at a time (got input_ids of shape {tuple(clean['input_ids'].shape)}); "
                         "use trace_dataset for many")
    answer_id, answer_label = answer_token(model, clean, answer)
    groups = input_groups(model, clean)
    positions = check_indices(spec.positions, len(groups), "position(s)", non_audio_positions(groups))
    score = spec.metric.bind(model, clean, answer_id)
    corr: CorruptedRun = spec.corruption.apply(model, clean)
    check_same_layout(clean, corr.inputs)
    on_device = lambda inputs: {k: v.to(model.device) for k, v in inputs.items() if isinstance(v, torch.Tensor)}  # noqa: E731
    corr.inputs = on_device(corr.inputs)
    cells = (build_cells(spec.mode, spec.layers, positions, spec.window, model.cfg.n_layers) if cells is None
             else cells(groups))
    job = TraceJob(on_device(clean), corr, spec.states, cells, final_position(clean), answer_id, score, spec.lora)
    info = dict(groups=groups, positions=positions, answer=answer_label, corruption=corr.description)
    return job, info


def pick_engine(model, spec: TraceSpec, job: TraceJob) -> Engine:
    reason = spec.engine.unsupported(model, job)
    if reason is None:
        return spec.engine
    warnings.warn(reason, stacklevel=3)
    return ReferenceEngine()


def result_fields(model, spec: TraceSpec, clean, job: TraceJob, info: dict, base, engine: Engine) -> dict:
    """What every result of a trace holds besides its scores' layout: checks, labels, settings."""
    checks = run_checks(model, base.clean_logits, base.corrupted_logits, job.answer, base.clean_score,
                        base.corrupted_score, spec.min_effect)
    str_tokens = clean.str_tokens[0] if isinstance(clean, PreparedInput) else []
    meta = getattr(clean, "meta", {}) or {}
    seconds = (meta.get("audio_seconds") or [None])[0]
    settings = dict(spec.settings(), model=getattr(model, "name_or_path", None), corruption=info["corruption"],
                    corruption_kind=spec.corruption.to_dict()["kind"], engine=engine.to_dict(),
                    audio_seconds=None if seconds is None or not len(seconds) else [float(seconds[0]), float(seconds[-1])],
                    duration=None if getattr(clean, "waveform", None) is None else len(clean.waveform) / clean.sampling_rate)
    metric = dict(spec.metric.to_dict(), describe=spec.metric.describe(), probability=spec.metric.probability)
    return dict(clean=base.clean_score, corrupted=base.corrupted_score, layers=list(spec.layers),
                groups=dict(enumerate(info["groups"])), states=spec.states, answer=info["answer"],
                answer_token=job.answer, metric=metric, checks=checks, settings=settings, str_tokens=str_tokens,
                special_positions=special_positions(clean, model.tokenizer) if isinstance(clean, PreparedInput) else [])


def make_result(model, spec: TraceSpec, clean, job: TraceJob, info: dict, base, patched, engine: Engine) -> TraceResult:
    fields = result_fields(model, spec, clean, job, info, base, engine)
    positions = info["positions"]
    if spec.mode == "tokens":
        patched = patched.view(len(spec.layers), len(positions))
    labels = [fields["str_tokens"][p] if fields["str_tokens"] else str(p) for p in positions]
    cls = TokenTrace if spec.mode == "tokens" else LayerTrace
    return cls(patched=patched, positions=positions, token_labels=labels, **fields)


def run_trace(model, spec: TraceSpec, clean: Mapping, answer, cells=None):
    """The job, its labels, the engine that ran it, its baseline and patched scores (checks warned)."""
    job, info = prepare_job(model, spec, clean, answer, cells)
    engine = pick_engine(model, spec, job)
    base = engine.baseline(model, job)
    return job, info, engine, base, engine.patched(model, job, base)


def causal_trace(
    model,
    clean: Mapping,
    corruption: Union[str, Corruption, Mapping] = "silence",
    *,
    answer: Union[int, str],
    metric: Union[str, Metric, Callable, None] = None,
    mode: str = "tokens",
    states: str = "resid_post",
    layers: Optional[Sequence[int]] = None,
    positions: Optional[Sequence[int]] = None,
    window: int = 1,
    engine: Union[str, Engine] = "fast",
    min_effect: Optional[float] = None,
    lora: Optional[str] = None,
    **moved,
) -> TraceResult:
    """Trace one item: restore clean `states` in the corrupted run, cell by cell.

    `states` may also name a spliced SAE's feature hook (`...hook_sae_acts_post`), with `features=[...]`
    (None: all at once): see `lalm_lens.features.cells.feature_trace`.

    `corruption`: `Silence()` (default), `GaussianNoise(...)`, `WhiteNoise(...)`,
    `Swap(audio)`, a shorthand string, or the corrupted input itself. `answer`: a
    one-token string or a token id. `metric`: `answer_prob` (default),
    `logit_diff(...)`, `option_prob(...)` or a callable on the final logits.
    `positions` default to every non-audio position (the paper's text tokens),
    `layers` to all. `engine`: "fast" (exact), "reference" (one forward per cell)
    or "attribution" (gradient estimate). `min_effect`: the smallest
    m(clean) − m(corrupted) for a well-posed trace (default: the metric's). `lora` (models with
    a LoRA adapter, e.g. Granite Speech): "on" or "off" in every run, "clean" in the clean run
    only (what the adapter's reading of the clean input restores); None: the model's own rule.
    """
    if isinstance(states, str) and ".hook_sae_" in states:  # an SAE's feature hook: lalm_lens.features.cells
        from lalm_lens.features.cells import feature_trace
        return feature_trace(model, clean, corruption, answer=answer, states=states, metric=metric, mode=mode,
                             layers=layers, positions=positions, window=window, engine=engine, min_effect=min_effect,
                             lora=lora, **moved)
    refuse_moved(moved)
    spec = TraceSpec(model, mode=mode, states=states, layers=layers, positions=positions, window=window,
                     corruption=corruption, metric=metric, engine=engine, min_effect=min_effect, lora=lora)
    job, info, engine, base, patched = run_trace(model, spec, clean, answer)
    result = make_result(model, spec, clean, job, info, base, patched, engine)
    warn_if_ill_posed(result.checks, f"the trace of {result.answer!r}")
    return result
