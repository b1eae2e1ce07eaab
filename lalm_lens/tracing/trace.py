"""`causal_trace`: the paper's clean / corrupted / patched runs on one item.

`mode="tokens"` restores one position at a time (cell = layer x position, a
`TokenTrace`); `mode="layers"` restores all `positions` at once at each layer
(a `LayerTrace`). For `attn_out` and `mlp_out` (or any state) `window=w`
restores layers `[l - w//2, l + ceil(w/2))` clipped at the ends, as ROME does.
Every argument is checked before any model work; the result carries the
checks that say whether its recovery rates mean anything. The two steps it
runs live in `pipeline.py`; a spliced SAE's feature hook is handed to
`lalm_lens.features.cells`, which sits above the pipeline and below this door.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Callable, Mapping, Optional, Sequence, Union

from lalm_lens.tracing.checks import warn_if_ill_posed
from lalm_lens.tracing.engines import Engine
from lalm_lens.tracing.interventions import Corruption
from lalm_lens.tracing.metrics import Metric
from lalm_lens.tracing.pipeline import TraceSpec, answer_token, finish, prepare
from lalm_lens.tracing.results import TraceResult

if TYPE_CHECKING:
    from lalm_lens.interface import LALM

__all__ = ["answer_token", "causal_trace"]


def causal_trace(
    model: "LALM",
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
    features: Optional[Sequence[int]] = None,
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
    if isinstance(states, str) and ".hook_sae_" in states:  # a spliced SAE's feature hook: lalm_lens.features.cells
        from lalm_lens.features.cells import feature_trace  # at call time: features import the tracing package
        return feature_trace(model, clean, corruption, answer=answer, states=states, metric=metric, mode=mode,
                             layers=layers, positions=positions, window=window, engine=engine, min_effect=min_effect,
                             lora=lora, features=features)
    spec = TraceSpec(model, mode=mode, states=states, layers=layers, positions=positions, window=window,
                     corruption=corruption, metric=metric, engine=engine, min_effect=min_effect, lora=lora)
    prep = prepare(model, spec, clean, answer)
    result = finish(model, prep, prep.patched(model))
    warn_if_ill_posed(result.checks, f"the trace of {result.answer!r}")
    return result
