"""`DatasetResult`: the records of a dataset run, their means with 95% bootstrap CIs, figures and summary."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

import numpy as np

from lalm_lens.tracing.numbers import num
from lalm_lens.tracing.results import FLAT, describe_curve, first_reaching


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


def _ci(mean, lo, hi, best) -> str:
    """The peak's 95% CI, or nothing for a flat curve (whose "peak" means nothing)."""
    if np.nanmax(mean) - np.nanmin(mean) < FLAT:
        return ""
    return f" (95% CI at that layer {num(lo[best])} to {num(hi[best])})"


@dataclass
class DatasetResult:
    records: list[dict[str, Any]]
    mode: str
    layers: list[int]
    settings: dict[str, Any] = field(default_factory=dict)

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
            text.append(f"{describe_curve(mean, layers)}{_ci(mean, lo, hi, best)}; first layer "
                        f"with mean RR >= 0.5: {first_reaching(mean, layers)}")
        else:
            for g, (layers, mean, lo, hi) in self.group_curves().items():
                best = int(np.nanargmax(mean))
                text.append(f"{g}: {describe_curve(mean, layers)}{_ci(mean, lo, hi, best)}")
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
                          metric={"name": "mean_rr", "describe": f"mean RR over {len(rows)} items"},
                          settings=settings, str_tokens=str_tokens)

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
        out: dict[str, Any] = dict(schema=2, mode=self.mode, layers=self.layers, counts=self.counts(),
                                   n_items=len(self.records), n_kept=len(self.kept), settings=self.settings)

        def curve(layers, m, lo, hi):
            finite = np.isfinite(m)
            peak = int(np.nanargmax(m)) if finite.any() else None
            return dict(mean=m.tolist(), ci_low=lo.tolist(), ci_high=hi.tolist(),
                        peak_layer=None if peak is None else layers[peak], peak=None if peak is None else float(m[peak]),
                        flat=bool(finite.any() and np.nanmax(m) - np.nanmin(m) < 0.05),
                        first_layer_at_half=first_reaching(m, layers))

        if self.kept:
            if self.mode == "layers":
                out["mean_recovery"] = curve(*self.layer_curve())
            else:
                out["group_recovery"] = {g: curve(*c) for g, c in self.group_curves().items()}
        return out

    def save(self, path: Union[str, Path]) -> Path:
        from lalm_lens.tracing.results import _clean_floats

        path = Path(path)
        path.write_text(json.dumps(_clean_floats(self.to_json()), indent=1, allow_nan=False))
        return path
