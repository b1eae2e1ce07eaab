"""Checks of a study file's values, all before any model loads.

Every message names the file, the entry and the key, and the fix (the nearest
valid key or value when there is one). Two entries that would share a run
folder or a label are refused, naming both, so no run reports another's records.
"""

from __future__ import annotations

import difflib
import math
from typing import Any, Iterable

TRACE_KEYS = ("states", "metric", "window", "engine", "min_effect", "filter", "batch_items", "layers")
MODEL_KEYS = ("name", "path", "dtype", "device", "encoder_path", "llm_path", "item_sets")
SET_KEYS = ("name", "items", "sakura", "limit")
SAKURA_KEYS = ("root", "track", "template")
TOP_KEYS = ("out", "models", "item_sets", "corruptions", "modes", "trace")
DTYPES = ("bfloat16", "float16", "float32")
FILTERS = {"checks": "checks", "top1": "top1", "none": None}


class StudyConfigError(ValueError):
    """The study file is not what `lalm-lens study` reads."""


def nearest(value: Any, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def known(table: Any, keys, where: str) -> dict:
    """A table whose keys are all in `keys`."""
    if not isinstance(table, dict):
        raise StudyConfigError(f"{where} must be a table of settings, got {table!r}")
    for key in table:
        if key not in keys:
            raise StudyConfigError(f"{where}: unknown key {key!r}{nearest(key, keys)}; known: {', '.join(keys)}")
    return table


def integer(value: Any, where: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise StudyConfigError(f"{where} must be an integer >= {minimum}, got {value!r}")
    return value


def text(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise StudyConfigError(f"{where} must be a non-empty string, got {value!r}")
    return value


def check_dtype(value: Any, where: str) -> Any:
    if value is not None and value not in DTYPES:
        raise StudyConfigError(f"{where}: {value!r} is not a dtype{nearest(value, DTYPES)}; choose from "
                               f"{', '.join(DTYPES)}")
    return value


def check_trace(trace: Any, where: str) -> dict:
    """`[trace]`'s values as `trace_dataset` takes them (a metric table becomes its Metric)."""
    from lalm_lens.tracing.cells import POSITIONAL_STATES
    from lalm_lens.tracing.engines import ENGINES
    from lalm_lens.tracing.metrics import NAMED, metric_from_dict

    out = dict(known(trace or {}, TRACE_KEYS, where))
    if "states" in out and out["states"] not in POSITIONAL_STATES:
        raise StudyConfigError(f"{where} states: {out['states']!r} is not a restorable block state"
                               f"{nearest(out['states'], POSITIONAL_STATES)}; choose from {', '.join(POSITIONAL_STATES)}")
    if "metric" in out:
        metric = out["metric"]
        try:
            if isinstance(metric, dict):
                out["metric"] = metric_from_dict(metric)
            elif metric not in NAMED:
                raise ValueError(f"unknown metric {metric!r}{nearest(metric, NAMED)}; choose from {', '.join(NAMED)} "
                                 "or a table {name = ..., foil = ...}")
        except (KeyError, TypeError, ValueError) as err:
            raise StudyConfigError(f"{where} metric: {err}") from None
    if "window" in out:
        integer(out["window"], f"{where} window", 1)
    if "engine" in out and out["engine"] not in ENGINES:
        raise StudyConfigError(f"{where} engine: {out['engine']!r}{nearest(out['engine'], ENGINES)}; choose from "
                               f"{', '.join(ENGINES)}")
    if "min_effect" in out:
        value = out["min_effect"]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise StudyConfigError(f"{where} min_effect must be a finite number, got {value!r}")
    if "filter" in out:
        value = "none" if out["filter"] is False else out["filter"]
        if value not in FILTERS:
            raise StudyConfigError(f"{where} filter: {value!r}; choose from 'checks' (drop ill-posed items), "
                                   "'top1' or 'none' (keep all)")
        out["filter"] = FILTERS[value]
    if "batch_items" in out and out["batch_items"] != "auto":
        integer(out["batch_items"], f"{where} batch_items (or 'auto')", 1)
    if "layers" in out:
        layers = out["layers"]
        if not isinstance(layers, list) or not layers:
            raise StudyConfigError(f"{where} layers must be a non-empty list of layer indices, got {layers!r}")
        for layer in layers:
            integer(layer, f"{where} layers", 0)
        if len(set(layers)) != len(layers):
            raise StudyConfigError(f"{where} layers: {layers} repeats a layer")
    return out


def refuse_duplicates(names: list[str], what: str, where: str) -> None:
    """Two entries with one name (or label): refused, naming both."""
    seen: dict[str, int] = {}
    for n, name in enumerate(names):
        if name in seen:
            raise StudyConfigError(f"{where}: {what}[{seen[name]}] and {what}[{n}] are both named {name!r}; "
                                   "give each its own name (label)")
        seen[name] = n


def refuse_shared_folders(names: list[str], what: str, where: str, slug) -> None:
    """Two names whose run folders would be one (`"pitch set"` and `"pitch_set"`; case-insensitive file
    systems join `"Pitch"` and `"pitch"`): refused, naming both."""
    seen: dict[str, str] = {}
    for name in names:
        folder = slug(name).casefold()
        if folder in seen:
            raise StudyConfigError(f"{where}: {what} {seen[folder]!r} and {name!r} would write the same run folder "
                                   f"{slug(name)}/ (and one would report the other's records); rename one")
        seen[folder] = name
