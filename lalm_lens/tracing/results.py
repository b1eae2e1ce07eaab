"""Trace results: each type says what it holds; all save, load, plot and summarise.

- `LayerTrace`: `patched[layer]`, the positions restored all at once at each layer;
- `TokenTrace`: `patched[layer, column]`, one position restored per cell.
Scores are the trace's metric (P(answer) by default): `clean`, `corrupted`,
`patched`; `recovery` = (patched − corrupted) / (clean − corrupted). `checks`
says whether the trace is well posed. Files are JSON (NaN saved as null, ±inf as
"inf"/"-inf", read back as they were) or NumPy archives, with a schema version;
CSV writes the long table. Printed numbers never read "-0.00" (`numbers.num`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, ClassVar, Optional

import numpy as np
import torch
from torch import Tensor

from lalm_lens.pages import Viewable
from lalm_lens.tracing.checks import Checks
from lalm_lens.tracing.numbers import json_floats, num, to_float, to_floats

SCHEMA = 2
FLAT = 0.05  # a curve whose RR varies less than this has no peak worth naming
RR_DEFINITION = "RR = (m_patched − m_corrupted) / (m_clean − m_corrupted)"


def recovery_of(patched: Tensor, clean: float, corrupted: float) -> Tensor:
    patched = patched.double()
    return (patched - corrupted) / (clean - corrupted) if clean != corrupted else patched * float("nan")


@dataclass
class TraceResult(Viewable):
    """What every trace holds; see `LayerTrace` and `TokenTrace`."""

    clean: float  # the metric of the clean run
    corrupted: float  # of the corrupted run (mean over noise samples)
    patched: Tensor  # of each patched run
    layers: list[int]
    positions: list[int]
    token_labels: list[str]  # the tokens at `positions`
    groups: dict[int, str]  # every position -> its token group
    states: str
    answer: str
    answer_token: int
    metric: dict[str, Any] = field(default_factory=lambda: {"name": "answer_prob"})
    checks: Checks = field(default_factory=Checks)
    settings: dict[str, Any] = field(default_factory=dict)
    str_tokens: list[str] = field(default_factory=list)  # the whole input
    special_positions: list[int] = field(default_factory=list)
    kind: ClassVar[str] = "trace"

    def __post_init__(self):
        self.patched = torch.as_tensor(self.patched, dtype=torch.float64)
        self.recovery = recovery_of(self.patched, self.clean, self.corrupted)

    # ------------------------------------------------------------ the metric, by its paper name
    def _probability(self, value):
        if not self.metric.get("probability", self.metric.get("name") in ("answer_prob", "option_prob")):
            raise AttributeError(f"this trace's metric is {self.metric.get('name')!r}, not a probability; "
                                 "use .clean / .corrupted / .patched")
        return value

    @property
    def p_clean(self) -> float:
        return self._probability(self.clean)

    @property
    def p_corrupted(self) -> float:
        return self._probability(self.corrupted)

    @property
    def p_patched(self) -> Tensor:
        return self._probability(self.patched)

    @property
    def mode(self) -> str:
        return self.kind

    @property
    def ill_posed(self) -> bool:
        return not self.checks.ok

    def position_label(self, position: int) -> str:
        """How figures and summaries name a position: `index: token`."""
        token = self.str_tokens[position] if self.str_tokens else str(position)
        return f"{position}: {token!s}".replace("\n", "\\n")

    # ------------------------------------------------------------ persistence
    def to_json(self) -> dict[str, Any]:
        base = {f.name for f in fields(TraceResult)}
        extra = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in base}  # a subclass's own
        return extra | {
            "schema": SCHEMA, "kind": self.kind, "clean": self.clean, "corrupted": self.corrupted,
            "patched": self.patched.tolist(), "recovery": self.recovery.tolist(), "layers": self.layers,
            "positions": self.positions, "token_labels": self.token_labels,
            "groups": {str(k): v for k, v in self.groups.items()}, "states": self.states, "answer": self.answer,
            "answer_token": self.answer_token, "metric": self.metric, "checks": self.checks.to_json(),
            "ill_posed": self.ill_posed, "settings": self.settings, "str_tokens": self.str_tokens,
            "special_positions": self.special_positions,
        }

    @staticmethod
    def from_json(d: dict[str, Any], source: str = "the data") -> "TraceResult":
        if not isinstance(d, dict):
            raise ValueError(f"{source} does not hold a trace result (a JSON object)")
        d = _upgrade(dict(d), source)
        kind = d.pop("kind")
        cls = RESULT_TYPES.get(kind)
        if cls is None:
            raise ValueError(f"{source}: unknown result kind {kind!r} (known: {sorted(RESULT_TYPES)})")
        for key in ("recovery", "ill_posed", "schema"):
            d.pop(key, None)
        try:
            d["clean"], d["corrupted"] = to_float(d["clean"]), to_float(d["corrupted"])
            d["patched"] = torch.tensor(to_floats(d["patched"]), dtype=torch.float64)
        except (TypeError, ValueError) as err:
            raise ValueError(f"{source}: the scores are not numbers ({err})") from None
        d["groups"] = {int(k): v for k, v in d["groups"].items()}
        d["checks"] = Checks.from_json(d.get("checks", []))
        try:
            result = cls(**d)
        except TypeError as err:
            raise ValueError(f"{source} is not a valid {kind} trace: {err}") from None
        result.validate(source)
        return result

    def validate(self, source: str = "the result") -> None:
        """Array shapes agree with the layers and positions they index."""
        if len(self.token_labels) != len(self.positions):
            raise ValueError(f"{source}: {len(self.token_labels)} token labels for {len(self.positions)} positions")
        expected = self.expected_shape()
        if tuple(self.patched.shape) != expected:
            raise ValueError(f"{source}: patched has shape {tuple(self.patched.shape)}, but {len(self.layers)} layers "
                             f"and {len(self.positions)} positions need {expected}")

    def expected_shape(self) -> tuple[int, ...]:
        raise NotImplementedError

    def save(self, path: str | Path) -> Path:
        """`.json`, `.npz` (arrays, plus the JSON metadata) or `.csv` (the long table of `to_dataframe`)."""
        path = Path(path)
        if path.suffix not in (".json", ".npz", ".csv"):
            raise ValueError(f"cannot save a trace as {path.suffix or 'a file without extension'!r}: "
                             "use .json, .npz or .csv")
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".csv":
            self.to_dataframe().to_csv(path, index=False)
        elif path.suffix == ".npz":
            meta = self.to_json()
            arrays = {"patched": np.asarray(meta.pop("patched")), "recovery": np.asarray(meta.pop("recovery"))}
            np.savez(path, meta=json.dumps(json_floats(meta), allow_nan=False), **arrays)
        else:
            path.write_text(json.dumps(json_floats(self.to_json()), indent=1, allow_nan=False))
        return path

    @staticmethod
    def load(path: str | Path) -> "TraceResult":
        """A result saved with `save` (`.json` or `.npz`), checked."""
        path = Path(path)
        if path.suffix == ".npz":
            try:
                data = np.load(path)
                meta = json.loads(str(data["meta"]))
                meta["patched"] = data["patched"].tolist()
            except (OSError, ValueError, KeyError, EOFError) as err:
                raise ValueError(f"{path} is not a readable trace archive: {err}") from None
            return TraceResult.from_json(meta, str(path))
        try:
            d = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as err:
            raise ValueError(f"{path} is truncated or not JSON ({err})") from None
        return TraceResult.from_json(d, str(path))

    # ------------------------------------------------------------ text
    def header(self) -> list[str]:
        what = self.metric.get("describe", self.metric.get("name"))
        m = "P" if self.metric.get("name") == "answer_prob" else "m"
        lines = [
            f"answer {self.answer!r} (token {self.answer_token}); metric m = {what} at the final position",
            f"{m}(clean) = {num(self.clean, '.4f')}, {m}(corrupted) = {num(self.corrupted, '.4f')} "
            f"[{self.settings.get('corruption', '')}]; {RR_DEFINITION}",
        ]
        if self.ill_posed:
            lines.append("WARNING " + self.checks.describe())
        return lines

    def summary(self) -> str:
        raise NotImplementedError

    def numbers(self) -> dict[str, Any]:
        """The summary as numbers (for `summary.json`)."""
        return dict(kind=self.kind, answer=self.answer, answer_token=self.answer_token, metric=self.metric,
                    clean=self.clean, corrupted=self.corrupted, ill_posed=self.ill_posed, checks=self.checks.to_json(),
                    states=self.states, layers=self.layers, n_positions=len(self.positions))

    def title(self, base: str) -> str:
        """A figure title: model, answer, corruption, state; the ill-posed flag on a line of its own."""
        model = self.settings.get("model")
        if model and Path(model).is_absolute():
            model = Path(model).name  # a local folder: its name (hub ids stay whole)
        parts = [p for p in (model, f"answer {self.answer!r}", self.settings.get("corruption_kind"), base) if p]
        title = " · ".join(parts)
        return title + ("\n" + self.checks.describe() if self.ill_posed else "")

    def restored(self) -> str:
        window = self.settings.get("window", 1)
        return self.states + (f" (window {window})" if window > 1 else "")


def _clean_floats(d):
    """NaN/inf anywhere in a JSON-able structure -> None."""
    if isinstance(d, dict):
        return {k: _clean_floats(v) for k, v in d.items()}
    if isinstance(d, (list, tuple)):
        return [_clean_floats(v) for v in d]
    return None if isinstance(d, float) and not math.isfinite(d) else d


def _upgrade(d: dict, source: str) -> dict:
    """Read older schemas; refuse newer ones."""
    schema = d.get("schema", 1)
    if not isinstance(schema, int) or schema > SCHEMA:
        raise ValueError(f"{source} was written with result schema {schema}; this lalm-lens reads up to {SCHEMA} "
                         "(upgrade lalm-lens)")
    if schema == 1:  # lalm-lens 0.1: P(answer) fields and `mode`
        try:
            d = dict(d, kind=d.pop("mode"), clean=d.pop("p_clean"), corrupted=d.pop("p_corrupted"),
                     patched=d.pop("p_patched"))
        except KeyError as err:
            raise ValueError(f"{source} is not a trace result (no {err})") from None
    missing = {"kind", "clean", "corrupted", "patched", "layers", "positions", "groups"} - set(d)
    if missing:
        raise ValueError(f"{source} is not a complete trace result (missing {sorted(missing)})")
    return d


def describe_curve(values, layers, axis: str = "layer") -> str:
    """The peak of a curve over layers (or another `axis`), or "flat" when it varies by less than `FLAT`;
    ties named as such."""
    values = np.asarray(values, dtype=float)
    finite = np.isfinite(values)
    if not finite.any():
        return "RR undefined (clean and corrupted scores are equal)"
    lo, hi = np.nanmin(values), np.nanmax(values)
    if hi - lo < FLAT:
        return f"flat: RR between {num(lo)} and {num(hi)} at every {axis}"
    top = [l for l, v in zip(layers, values) if not np.isnan(v) and v >= hi - 1e-3]
    where = f"{axis} {top[0]}" if len(top) == 1 else f"{axis}s {', '.join(map(str, top))} (tied)"
    return f"max RR {num(hi)} at {where}"


def group_max(values: Tensor) -> float:
    """The largest value that is not NaN (NaN when there is none)."""
    values = values[~values.isnan()]
    return float(values.max()) if values.numel() else math.nan


def first_reaching(values, layers, level: float = 0.5):
    return next((l for l, v in zip(layers, values) if np.isfinite(v) and v >= level), None)


@dataclass
class LayerTrace(TraceResult):
    """`patched[layer]`: at each layer, the `positions` restored all at once (the paper's layer-wise analysis)."""

    kind: ClassVar[str] = "layers"

    def expected_shape(self) -> tuple[int, ...]:
        return (len(self.layers),)

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame(dict(layer=self.layers, score=self.patched.tolist(), recovery=self.recovery.tolist()))

    def summary(self) -> str:
        rec = self.recovery.numpy()
        lines = self.header()
        lines.append(f"restoring {self.restored()} of {len(self.positions)} positions at each layer: "
                     f"{describe_curve(rec, self.layers)}; first layer with RR >= 0.5: "
                     f"{first_reaching(rec, self.layers)}")
        lines.append("RR by layer: " + ", ".join(f"{l}: {num(v)}" for l, v in zip(self.layers, rec)))
        return "\n".join(lines)

    def numbers(self) -> dict[str, Any]:
        rec = self.recovery.numpy()
        finite = np.isfinite(rec)
        peak = int(np.nanargmax(rec)) if finite.any() else None
        return dict(super().numbers(), recovery=rec.tolist(), peak_layer=None if peak is None else self.layers[peak],
                    peak=None if peak is None else float(rec[peak]),
                    flat=bool(finite.any() and np.nanmax(rec) - np.nanmin(rec) < FLAT),
                    first_layer_at_half=first_reaching(rec, self.layers))

    def plot(self, ax=None, value: str = "recovery", title: Optional[str] = None):
        from lalm_lens.tracing import plots

        return plots.plot_layers({self.states: self}, ax=ax, value=value,
                                 title=title or self.title(f"restoring {self.restored()} of {len(self.positions)} positions"))


@dataclass
class TokenTrace(TraceResult):
    """`patched[layer, i]`: position `positions[i]` restored alone at each layer (the token-wise analysis)."""

    kind: ClassVar[str] = "tokens"

    def expected_shape(self) -> tuple[int, ...]:
        return (len(self.layers), len(self.positions))

    def group_of(self, position: int) -> str:
        return self.groups[position]

    def group_recovery(self) -> dict[str, Tensor]:
        """Mean recovery over each group's traced positions, `[n_layers]` per group."""
        out = {}
        for name in dict.fromkeys(self.groups[p] for p in self.positions):
            cols = [j for j, p in enumerate(self.positions) if self.groups[p] == name]
            out[name] = self.recovery[:, cols].mean(1)
        return out

    def to_dataframe(self):
        import pandas as pd

        rows = [dict(layer=layer, position=pos, token=self.token_labels[b], group=self.groups[pos],
                     score=float(self.patched[a, b]), recovery=float(self.recovery[a, b]))
                for a, layer in enumerate(self.layers) for b, pos in enumerate(self.positions)]
        return pd.DataFrame(rows)

    def summary(self) -> str:
        rec = self.recovery.float()
        lines = self.header()
        if torch.isfinite(rec).any():
            flat = int(rec.nan_to_num(-1e9).argmax())
            a, b = divmod(flat, rec.shape[1])
            pos = self.positions[b]
            lines.append(f"restoring {self.restored()} one position at a time: best cell layer {self.layers[a]}, "
                         f"position {self.position_label(pos)} ({self.groups[pos]}), RR {num(rec[a, b])}")
            lines.append("max RR per group: " + ", ".join(f"{g} {num(group_max(v))}"
                                                          for g, v in self.group_recovery().items()))
        else:
            lines.append("RR undefined (clean and corrupted scores are equal)")
        return "\n".join(lines)

    def numbers(self) -> dict[str, Any]:
        rec = self.recovery.float()
        out = dict(super().numbers(), best=None, group_max={})
        if torch.isfinite(rec).any():
            a, b = divmod(int(rec.nan_to_num(-1e9).argmax()), rec.shape[1])
            pos = self.positions[b]
            out["best"] = dict(layer=self.layers[a], position=pos, token=self.token_labels[b], group=self.groups[pos],
                               recovery=float(rec[a, b]))
            out["group_max"] = {g: group_max(v) for g, v in self.group_recovery().items()}
        return out

    def plot(self, ax=None, value: str = "recovery", title: Optional[str] = None, hide_template: bool = False):
        from lalm_lens.tracing import plots

        return plots.plot_heatmap(self, ax=ax, value=value, hide_template=hide_template,
                                  title=title or self.title(f"restoring {self.restored()}, one position per cell"))


RESULT_TYPES: dict[str, type[TraceResult]] = {"layers": LayerTrace, "tokens": TokenTrace}
