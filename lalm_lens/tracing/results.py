"""Trace results: each type says what it holds; all save, load, plot and summarise.

- `LayerTrace`: `patched[layer]`, the positions restored all at once at each layer;
- `TokenTrace`: `patched[layer, column]`, one position restored per cell.
Scores are the trace's metric (P(answer) by default): `clean`, `corrupted`,
`patched`; `recovery` = (patched − corrupted) / (clean − corrupted). `checks`
says whether the trace is well posed. Files are JSON (NaN saved as null, ±inf as
"inf"/"-inf", read back as they were) or NumPy archives, with the one result
schema (`lalm_lens.result`); CSV writes the long table. Printed numbers never read "-0.00" (`numbers.num`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from lalm_lens.result import SCHEMA, Result  # noqa: F401  (SCHEMA re-exported: one schema for every result)
from lalm_lens.tracing.checks import Checks
from lalm_lens.tracing.numbers import num, to_float, to_floats

FLAT = 0.05  # a curve whose RR varies less than this has no peak worth naming
RR_DEFINITION = "RR = (m_patched − m_corrupted) / (m_clean − m_corrupted)"


def recovery_of(patched: Float[Tensor, "*cells"], clean: float, corrupted: float) -> Float[Tensor, "*cells"]:
    patched = patched.double()
    return (patched - corrupted) / (clean - corrupted) if clean != corrupted else patched * float("nan")


def probability(metric: dict[str, Any], value, what: str, instead: str):
    """`value` where the result's metric is a probability (its `p_*` names); an AttributeError naming `instead`
    otherwise."""
    if not metric.get("probability", metric.get("name") in ("answer_prob", "option_prob")):
        raise AttributeError(f"this {what}'s metric is {metric.get('name')!r}, not a probability; use {instead}")
    return value


@dataclass
class TraceResult(Result):
    """What every trace holds; see `LayerTrace` and `TokenTrace`."""

    clean: float  # the metric of the clean run
    corrupted: float  # of the corrupted run (mean over noise samples)
    patched: Float[Tensor, "layer *column"]  # of each patched run
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
    what: ClassVar[str] = "trace"
    ARRAYS: ClassVar[tuple[str, ...]] = ("patched", "recovery")

    def __post_init__(self):
        self.patched = torch.as_tensor(self.patched, dtype=torch.float64)
        self.recovery = recovery_of(self.patched, self.clean, self.corrupted)

    # ------------------------------------------------------------ the metric, by its paper name
    def _probability(self, value):
        return probability(self.metric, value, "trace", ".clean / .corrupted / .patched")

    @property
    def p_clean(self) -> float:
        return self._probability(self.clean)

    @property
    def p_corrupted(self) -> float:
        return self._probability(self.corrupted)

    @property
    def p_patched(self) -> Float[Tensor, "layer *column"]:
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

    # ------------------------------------------------------------ persistence (`Result.save` / `Result.load`)
    def to_json(self) -> dict[str, Any]:
        return dict(super().to_json(), recovery=self.recovery.tolist(), checks=self.checks.to_json(),
                    groups={str(k): v for k, v in self.groups.items()}, ill_posed=self.ill_posed)

    @classmethod
    def _from_json(cls, d: dict[str, Any], source: str) -> "TraceResult":
        missing = {"clean", "corrupted", "patched", "layers", "positions", "groups"} - set(d)
        if missing:
            raise ValueError(f"{source} is not a complete trace result (missing {sorted(missing)})")
        for key in ("recovery", "ill_posed"):
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
            raise ValueError(f"{source} is not a valid {cls.kind} trace: {err}") from None
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


def group_max(values: Float[Tensor, "*any"]) -> float:
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

    def group_recovery(self) -> dict[str, Float[Tensor, " layer"]]:
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


