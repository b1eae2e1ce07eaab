"""Engines: how a trace computes its clean, corrupted and patched scores (see `base.py`).

`engine="fast"` (the default), `"reference"` or `"attribution"`, or a value such as
`FastEngine(max_batch_tokens=4096)`.
"""

from __future__ import annotations

from typing import Union

from lalm_lens.tracing.engines.attribution import AttributionEngine
from lalm_lens.tracing.engines.base import Baseline, Engine, TraceJob, restoring
from lalm_lens.tracing.engines.fast import FastBaseline, FastEngine
from lalm_lens.tracing.engines.reference import ReferenceBaseline, ReferenceEngine

ENGINES = {"fast": FastEngine, "reference": ReferenceEngine, "attribution": AttributionEngine}


def as_engine(engine: Union[str, Engine]) -> Engine:
    if isinstance(engine, Engine):
        return engine
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {sorted(ENGINES)} or an Engine value, got {engine!r}")
    return ENGINES[engine]()


__all__ = ["AttributionEngine", "Baseline", "ENGINES", "Engine", "FastBaseline", "FastEngine", "ReferenceBaseline",
           "ReferenceEngine", "TraceJob", "as_engine", "restoring"]
