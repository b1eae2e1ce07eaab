"""`DatasetResult`: the records of a dataset run, their means with 95% bootstrap CIs, figures and summary.

`to_json` is the summary in numbers (counts, curves with CIs, peaks: what a study's
`summary.json` holds per run); `save("x.json")` writes it with the records, so
`Result.load` reads the run back. `DatasetResult.load` also reads a
`trace-dataset --out` folder (its `records.jsonl`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Optional, Union

import numpy as np

from lalm_lens.result import SCHEMA, Result, write_json
from lalm_lens.tracing.numbers import num
from lalm_lens.tracing.results import FLAT, _clean_floats, describe_curve, first_reaching


def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95):
    """Mean and percentile-bootstrap CI over axis 0 (items), NaNs ignored."""
    values = np.asarray(values, dtype=float)
    mean = np.nanmean(values, axis=0)
    if len(values) < 2:
        return mean, mean.copy(), mean.copy()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    boots = np.nanmean(values[idx], axis=1)
    alpha = (1 - level) / 2
    return mean, np.nanquantile(boots, alpha, axis=0), np.nanquantile(boots, 1 - alpha, axis=0)


def _ci(mean, lo, hi, best, n: int = 2) -> str:
    """The peak's 95% CI, or nothing for a flat curve (whose "peak" means nothing) or a single item."""
    if n < 2 or np.nanmax(mean) - np.nanmin(mean) < FLAT:
        return ""
    return f" (95% CI at that layer {num(lo[best])} to {num(hi[best])})"


@dataclass
class DatasetResult(Result):
    records: list[dict[str, Any]]
    mode: str
    layers: list[int]
    settings: dict[str, Any] = field(default_factory=dict)
    kind: ClassVar[str] = "dataset"
    what: ClassVar[str] = "dataset result"

    @property
    def kept(self) -> list[dict]:
        return [r for r in self.records if r["status"] == "ok"]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.records:
            out[r["status"]] = out.get(r["status"], 0) + 1
        return out

    @property
    def all_failed(self) -> bool:
        return bool(self.records) and all(r["status"] == "error" for r in self.records)

    def layer_curve(self):
        """Layers mode: (layers, mean RR, CI low, CI high) over kept items."""
        rows = [r["recovery"] for r in self.kept]
        if not rows:
            raise ValueError("no item was kept")
        return (self.layers, *bootstrap_ci(np.array(rows, dtype=float)))

    def group_curves(self) -> dict[str, tuple]:
        """Tokens mode: per group, (layers, mean RR, CI low, CI high) over kept items."""
        names = dict.fromkeys(g for r in self.kept for g in r["group_recovery"])
        return {g: (self.layers, *bootstrap_ci(np.array([r["group_recovery"][g] for r in self.kept
                                                          if g in r["group_recovery"]], dtype=float))) for g in names}

    def summary(self) -> str:
        counts = self.counts()
        text = [f"{len(self.records)} items: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))]
        if not self.kept:
            return text[0] + "; nothing to average" + (" (every item failed: see the records' errors)"
                                                       if self.all_failed else "")
        text.append(f"mean RR over {len(self.kept)} kept items, with 95% bootstrap CIs; RR = (m_patched − m_corrupted)"
                    " / (m_clean − m_corrupted) per item")
        if self.mode == "layers":
            layers, mean, lo, hi = self.layer_curve()
            best = int(np.nanargmax(mean))
            text.append(f"{describe_curve(mean, layers)}{_ci(mean, lo, hi, best, len(self.kept))}; first layer "
                        f"with mean RR >= 0.5: {first_reaching(mean, layers)}")
        else:
            for g, (layers, mean, lo, hi) in self.group_curves().items():
                best = int(np.nanargmax(mean))
                text.append(f"{g}: {describe_curve(mean, layers)}{_ci(mean, lo, hi, best, len(self.kept))}")
        return "\n".join(text)

    def mean_token_trace(self):
        """Tokens mode: the heatmap of mean RR over the kept items that share the most common prompt
        (their text positions align); None when there is none. The audio span is one row."""
        from collections import Counter

        import torch

        from lalm_lens.tracing.results import TokenTrace

        if self.mode != "tokens" or not self.kept:
            return None
        labels, _ = Counter(tuple(r["token_labels"]) for r in self.kept).most_common(1)[0]
        rows = [r for r in self.kept if tuple(r["token_labels"]) == labels]
        first = rows[0]
        positions = first["positions"]
        groups = dict(zip(positions, first["groups"]))
        spans = [r["audio_span"] for r in rows if r.get("audio_span")]
        if spans:
            groups.update({p: "audio" for p in range(spans[0][0], spans[0][1] + 1) if p not in groups})
        sizes = sorted({b - a + 1 for a, b in spans})
        str_tokens = [""] * (max(positions) + 1)
        for p, token in zip(positions, labels):
            str_tokens[p] = token
        settings = dict(self.settings, audio_label=(f"[{sizes[0]}–{sizes[-1]} audio tokens]" if len(sizes) > 1 else
                                                    f"[{sizes[0]} audio tokens]") if sizes else None)
        return TokenTrace(clean=1.0, corrupted=0.0, patched=torch.tensor(np.nanmean([r["recovery"] for r in rows], 0)),
                          layers=self.layers, positions=positions, token_labels=list(labels), groups=groups,
                          states=self.settings.get("states", ""), answer=f"mean over {len(rows)} items", answer_token=-1,
                          metric={"name": "mean_rr", "describe": self.heatmap_describe(len(rows))},
                          settings=settings, str_tokens=str_tokens)

    def heatmap_describe(self, n: int) -> str:
        """What the mean heatmap averages: all kept items, or the share that has the most common prompt."""
        kept = len(self.kept)
        if n == kept:
            return f"mean RR over all {kept} kept items"
        return f"mean RR over {n} of {kept} kept items (those with the most common prompt; text positions align)"

    def title(self) -> str:
        s = self.settings
        state = s.get("states", "")
        parts = [s.get("model"), (s.get("corruption") or {}).get("kind"), f"restoring {state}",
                 f"n = {len(self.kept)} items"]
        return " · ".join(str(p) for p in parts if p)

    def plot(self, ax=None, title: Optional[str] = None):
        from lalm_lens.tracing import plots

        band = f"95% CI over {len(self.kept)} items"
        if self.mode == "layers":
            return plots.plot_layers({"mean RR": self.layer_curve()}, ax=ax, title=title or self.title(), band=band)
        return plots.plot_groups(self.group_curves(), ax=ax, title=title or self.title(), band=band)

    def to_json(self) -> dict[str, Any]:
        """Numbers and settings (no sentences): counts, curves with CIs, peaks."""
        out: dict[str, Any] = dict(kind=self.kind, schema=SCHEMA, mode=self.mode, layers=self.layers, counts=self.counts(),
                                   n_items=len(self.records), n_kept=len(self.kept), settings=self.settings)

        def curve(layers, m, lo, hi):
            finite = np.isfinite(m)
            peak = int(np.nanargmax(m)) if finite.any() else None
            flat = bool(finite.any() and np.nanmax(m) - np.nanmin(m) < FLAT)
            tied = [] if peak is None or flat else [l for l, v in zip(layers, m) if np.isfinite(v) and v >= m[peak] - 1e-3]
            ci = len(self.kept) > 1  # one item has no CI
            return dict(mean=m.tolist(), ci_low=lo.tolist() if ci else None, ci_high=hi.tolist() if ci else None,
                        peak_layer=None if peak is None or flat else layers[peak],
                        peak=None if peak is None else float(m[peak]), tied_layers=tied if len(tied) > 1 else None,
                        flat=flat, first_layer_at_half=first_reaching(m, layers))

        if self.kept:
            if self.mode == "layers":
                out["mean_recovery"] = curve(*self.layer_curve())
            else:
                out["group_recovery"] = {g: curve(*c) for g, c in self.group_curves().items()}
        return out

    @classmethod
    def load(cls, path: Union[str, Path]) -> "DatasetResult":
        """A dataset run read back from its `--out` folder (or its `records.jsonl`): its records (one per id,
        the last written) and settings, as `trace_dataset` returned them; or from the `.json` `save` wrote."""
        from lalm_lens.tracing.records import read_records

        path = Path(path)
        if path.suffix == ".json" and path.is_file():
            return super().load(path)
        file = path / "records.jsonl" if path.is_dir() else path
        if not file.is_file():
            raise FileNotFoundError(f"no records file {file} (DatasetResult.load takes a trace-dataset --out folder, "
                                    "its records.jsonl, or the .json that DatasetResult.save wrote)")
        header, records = read_records(file, repair=False)
        settings = (header or {}).get("settings") or {}
        if "mode" not in settings or "layers" not in settings:
            raise ValueError(f"{file} has no settings header with mode and layers: not a trace-dataset records file")
        by_id = {r["id"]: r for r in records if isinstance(r, dict) and "id" in r}  # a retried id counts once
        return cls(records=list(by_id.values()), mode=settings["mode"], layers=list(settings["layers"]),
                   settings=settings)

    @classmethod
    def _from_json(cls, d: dict[str, Any], source: str) -> "DatasetResult":
        if "records" not in d:
            raise ValueError(f"{source} is a dataset summary without its records (a summary written before they were "
                             "saved with it); load the trace-dataset --out folder with DatasetResult.load(folder)")
        return super()._from_json({k: d[k] for k in ("records", "mode", "layers", "settings") if k in d}, source)

    def to_dataframe(self):
        """One row per item x layer (layers mode) or item x layer x restored position (tokens mode), with the
        item's own fields (id, question, answer, options, status, clean, corrupted, ...); an item that was not
        traced (dropped by a check, or an error) is one row with no layer."""
        import pandas as pd

        arrays = {"patched", "recovery", "positions", "groups", "group_recovery", "token_labels", "checks",
                  "audio_span", "work"}
        rows = []
        for r in self.records:
            item = {}
            for k, v in r.items():
                if k in arrays:
                    continue
                if isinstance(v, dict):
                    item.update({f"{k}.{a}": b for a, b in v.items()})
                else:
                    item[k] = v
            item["kept"] = r.get("status") == "ok"
            rec, patched = r.get("recovery"), r.get("patched")
            if rec is None:
                rows.append(dict(item, layer=None))
                continue
            for a, layer in enumerate(self.layers):
                if self.mode == "layers":
                    rows.append(dict(item, layer=layer, patched=patched[a], recovery=rec[a]))
                    continue
                for j, pos in enumerate(r["positions"]):
                    rows.append(dict(item, layer=layer, position=pos, token=r["token_labels"][j],
                                     group=r["groups"][j], patched=patched[a][j], recovery=rec[a][j]))
        frame = pd.DataFrame(rows)
        for col in ("layer", "position"):
            if col in frame:
                frame[col] = frame[col].astype("Int64")  # an untraced item's row has none
        for col in ("patched", "recovery"):
            if col in frame:
                frame[col] = pd.to_numeric(frame[col], errors="coerce")  # None (NaN saved as null) -> NaN
        return frame

    def save(self, path: Union[str, Path]) -> Path:
        """`.json`: the summary in numbers (`to_json`) and the records; `.csv`: the long table."""
        path = Path(path)
        if path.suffix != ".json":
            return super().save(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        return write_json(path, _clean_floats(dict(self.to_json(), records=self.records)))  # ±inf as null, as ever
