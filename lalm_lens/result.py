"""`Result`: the one base of every analysis's result, one file schema, and the table of result kinds.

Every result is a dataclass with a `kind`. It saves as JSON (`save("x.json")`:
its fields, `kind` and `schema`; NaN written as null and ±inf as "inf"/"-inf",
read back as they were), as CSV (`to_dataframe`'s long table), and, for results
with large arrays (`ARRAYS`), as a NumPy archive. `Result.load(path)` reads any
kind: the file's `kind` picks the class from `KINDS`, a table in this module,
so loading never depends on which modules happen to be imported. Files of older
schemas are migrated on load (`upgrade`); newer ones are refused.
"""

from __future__ import annotations

import importlib
import json
from dataclasses import fields
from pathlib import Path
from typing import Any, ClassVar, Union

import numpy as np
import torch

from lalm_lens.pages import Viewable

SCHEMA = 2  # every result file; see `upgrade` for what older files held

KINDS: dict[str, str] = {
    "layers": "lalm_lens.tracing.results:LayerTrace",
    "tokens": "lalm_lens.tracing.results:TokenTrace",
    "audio_time": "lalm_lens.tracing.sweeps:TimeTrace",
    "heads": "lalm_lens.tracing.sweeps:HeadTrace",
    "experts": "lalm_lens.tracing.experts:ExpertTrace",
    "logit_lens": "lalm_lens.tracing.lens:LensResult",
    "knockout": "lalm_lens.tracing.knockout:KnockoutResult",
    "dataset": "lalm_lens.tracing.dataset_result:DatasetResult",
    "edge_scores": "lalm_lens.circuits.result:EdgeScores",
    "feature_activation": "lalm_lens.features.views:FeatureActivation",
    "features": "lalm_lens.features.cells:FeatureTrace",
    "feature_windows": "lalm_lens.features.views:TopWindows",
}
"""Every result kind -> `module:Class`. A new analysis adds its line here (a test checks the table against
the classes)."""

PathLike = Union[str, Path]


def result_type(kind: str) -> type["Result"]:
    """The class of a result kind, from `KINDS`."""
    if kind not in KINDS:
        raise ValueError(f"unknown result kind {kind!r} (known: {sorted(KINDS)})")
    module, name = KINDS[kind].split(":")
    return getattr(importlib.import_module(module), name)


def upgrade(d: dict[str, Any], source: str) -> dict[str, Any]:
    """A result file's JSON at the current schema. Older files:
    - trace schema 1 (lalm-lens 0.1): `mode` for `kind`, `p_clean`/`p_corrupted`/`p_patched` for the scores;
    - feature views schema 1: the same fields as now;
    - edge scores `"lalm-lens/edge-scores/1"`: no `kind`.
    Newer schemas are refused."""
    d = dict(d)
    schema = d.get("schema", 1)
    if schema == "lalm-lens/edge-scores/1":
        return dict(d, kind="edge_scores", schema=SCHEMA)
    if isinstance(schema, str):
        raise ValueError(f"{source} is not a result file this lalm-lens reads (schema {schema!r})")
    if not isinstance(schema, int) or isinstance(schema, bool) or schema > SCHEMA:
        raise ValueError(f"{source} was written with result schema {schema}; this lalm-lens reads up to {SCHEMA} "
                         "(upgrade lalm-lens)")
    if schema == 1 and "kind" not in d and "mode" in d:  # a trace of lalm-lens 0.1
        try:
            d = dict(d, kind=d.pop("mode"), clean=d.pop("p_clean"), corrupted=d.pop("p_corrupted"),
                     patched=d.pop("p_patched"))
        except KeyError as err:
            raise ValueError(f"{source} is not a trace result (no {err})") from None
    return dict(d, schema=SCHEMA)


def write_json(path: Path, data: dict[str, Any]) -> Path:
    """`data` as JSON at `path`: NaN as null, ±inf as "inf"/"-inf" (`numbers.json_floats`)."""
    from lalm_lens.tracing.numbers import json_floats

    path.write_text(json.dumps(json_floats(data), indent=1, allow_nan=False))
    return path


def _family(cls: type) -> type:
    """The class right under `Result` in `cls`'s bases (`TraceResult` for every trace kind)."""
    return next(c for c in reversed(cls.__mro__) if issubclass(c, Result) and c is not Result)


def _plain(value: Any) -> Any:
    """Tensors and arrays as nested lists, through dicts and lists."""
    if isinstance(value, (torch.Tensor, np.ndarray)):
        return value.tolist()
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    return value


class Result(Viewable):
    """What every result does: `summary`, `plot`, `to_dataframe`, `save`/`load`, `to_html` (from `Viewable`).

    A subclass is a dataclass with `kind` (its line in `KINDS`); `to_json`/`from_json` default to its fields
    (tensors as lists) and are overridden where a field needs more (a tensor to rebuild, a check on load)."""

    kind: ClassVar[str] = ""
    what: ClassVar[str] = ""  # the kind in words, for messages ("logit lens"); `kind` when empty
    ARRAYS: ClassVar[tuple[str, ...]] = ()  # the fields a `.npz` stores as arrays (none: no `.npz`)

    # ------------------------------------------------------------ what every analysis writes
    def summary(self) -> str:
        raise NotImplementedError

    def plot(self, *args, **kwargs):
        raise NotImplementedError

    def to_dataframe(self):
        raise NotImplementedError

    # ------------------------------------------------------------ JSON
    def to_json(self) -> dict[str, Any]:
        """The file's content: every field (tensors as lists), `kind` and `schema`."""
        return dict({f.name: _plain(getattr(self, f.name)) for f in fields(self)}, kind=self.kind, schema=SCHEMA)

    @classmethod
    def from_json(cls, d: dict[str, Any], source: str = "the data") -> "Result":
        """A result from its JSON (any kind when called on `Result`, else that kind), migrated and checked."""
        if not isinstance(d, dict):
            raise ValueError(f"{source} does not hold a result (a JSON object)")
        d = upgrade(d, source)
        kind = d.get("kind")
        if kind not in KINDS:
            raise ValueError(f"{source}: unknown result kind {kind!r} (known: {sorted(KINDS)})")
        found = result_type(kind)
        if not issubclass(found, cls):
            raise ValueError(f"{source} is not a {cls.what or cls.kind or cls.__name__} this lalm-lens reads "
                             f"(kind {kind!r}, schema {d.get('schema')}); load it with {_family(found).__name__}.load")
        d.pop("kind"), d.pop("schema")
        return found._from_json(d, source)

    @classmethod
    def _from_json(cls, d: dict[str, Any], source: str) -> "Result":
        """This kind from its JSON fields (`kind` and `schema` removed); override to rebuild or check fields."""
        try:
            return cls(**d)
        except TypeError as err:
            raise ValueError(f"{source} is not a valid {cls.what or cls.kind}: {err}") from None

    # ------------------------------------------------------------ files
    def formats(self) -> tuple[str, ...]:
        return (".json", ".npz", ".csv") if self.ARRAYS else (".json", ".csv")

    def save(self, path: PathLike) -> Path:
        """`.json`; `.csv` (the long table of `to_dataframe`); `.npz` (arrays, plus the JSON) for kinds with
        `ARRAYS`."""
        from lalm_lens.tracing.numbers import json_floats

        path = Path(path)
        if path.suffix not in self.formats():
            given, formats = path.suffix or "a file without extension", self.formats()
            raise ValueError(f"cannot save a {self.what or self.kind} as {given!r}: "
                             f"use {', '.join(formats[:-1])} or {formats[-1]}")
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".csv":
            self.to_dataframe().to_csv(path, index=False)
        elif path.suffix == ".npz":
            meta = self.to_json()
            arrays = {k: np.asarray(meta.pop(k)) for k in self.ARRAYS if k in meta}
            np.savez(path, meta=json.dumps(json_floats(meta), allow_nan=False), **arrays)
        else:
            write_json(path, self.to_json())
        return path

    @classmethod
    def load(cls, path: PathLike) -> "Result":
        """A result saved with `save` (`.json` or `.npz`), of any kind (`Result.load`) or of this kind."""
        path = Path(path)
        what = cls.what or cls.kind or "result"
        raw = path.read_bytes()
        if raw[:2] == b"PK":  # a zip file: a NumPy archive
            if cls is not Result and not getattr(cls, "ARRAYS", ()):
                raise ValueError(f"{path} is a NumPy archive, not a {what} (a {what} is saved as .json by "
                                 f"{cls.__name__}.save); load trace results with TraceResult.load")
            try:
                data = np.load(path)
                d = json.loads(str(data["meta"]))
                d.update({k: data[k].tolist() for k in data.files if k != "meta"})
            except (OSError, ValueError, KeyError, EOFError) as err:
                raise ValueError(f"{path} is not a readable result archive: {err}") from None
            return cls.from_json(d, str(path))
        try:
            d = json.loads(raw.decode())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is truncated or not JSON ({err})") from None
        return cls.from_json(d, str(path))
