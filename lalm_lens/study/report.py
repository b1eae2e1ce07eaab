"""A study's figures (the paper's) and a short markdown report with the tables behind them.

- `figures/layers_<set>_<corruption>.png`: layer-wise mean RR, one line per model, 95% CIs;
- `figures/groups_<model>_<set>_<corruption>.png`: mean RR per token group and layer;
- `figures/heatmap_<model>_<set>_<corruption>.png`: the token-wise heatmap averaged over items;
- `report.md` (tables: items kept, peaks, first layer at RR 0.5, group maxima) and `summary.json` (numbers).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from lalm_lens.study.config import Study, slug
from lalm_lens.tracing import plots
from lalm_lens.tracing.results import FLAT, _clean_floats, first_reaching

GROUPS = ("early_prompt", "object", "late_prompt", "final", "transcript", "template")


def num(x: float) -> str:
    """Two decimals, never `-0.00`."""
    return f"{x:.2f}".replace("-0.00", "0.00")


def peak(mean, layers) -> tuple[str, int | None]:
    """The peak layer as the report prints it: one layer, "tied (3, 4)" among equal maxima, "flat" for a
    curve that varies by less than `FLAT` (as `summary.json` marks it); and the index of the (first) peak."""
    mean = np.asarray(mean, dtype=float)
    if not np.isfinite(mean).any():
        return "–", None
    best = int(np.nanargmax(mean))
    if np.nanmax(mean) - np.nanmin(mean) < FLAT:
        return "flat", None
    top = [l for l, v in zip(layers, mean) if np.isfinite(v) and v >= mean[best] - 1e-3]
    return (str(top[0]) if len(top) == 1 else f"tied ({', '.join(map(str, top))})"), best


def _cell(mean, lo, hi, i, n: int) -> str:
    """The mean RR at the peak with its 95% CI (none for one item, and none for a flat curve)."""
    if i is None:
        return f"flat: {num(np.nanmin(mean))} to {num(np.nanmax(mean))}" if np.isfinite(mean).any() else "–"
    return f"{num(mean[i])} (n = 1: no CI)" if n < 2 else f"{num(mean[i])} [{num(lo[i])}, {num(hi[i])}]"


def _or_dash(value) -> str:
    return "–" if value is None else str(value)


def model_colors(study: Study) -> dict:
    """One colour per model, the same in every figure of the study."""
    import matplotlib

    cycle = matplotlib.colormaps["tab10"].colors
    return {m.name: matplotlib.colors.to_hex(cycle[k % len(cycle)]) for k, m in enumerate(study.models)}


def layer_section(study: Study, results: dict, figures: Path) -> list[str]:
    lines = ["## Layer-wise: all text positions restored at each layer", ""]
    for item_set in study.item_sets:
        for label in study.corruptions:
            runs = {m.name: results.get((m.name, item_set.name, label, "layers")) for m in study.models}
            runs = {k: v for k, v in runs.items() if v is not None}
            if not runs:
                continue
            lines += [f"### {item_set.name} · {label}", "",
                      "| model | items kept / traced | peak layer | mean RR at peak [95% CI] | first layer with mean RR >= 0.5 |",
                      "|---|---|---|---|---|"]
            curves, colors, palette = {}, {}, model_colors(study)
            for name, result in runs.items():
                if not result.kept:
                    lines.append(f"| {name} | 0 / {len(result.records)} | – | – | – |")
                    continue
                layers, mean, lo, hi = result.layer_curve()
                where, best = peak(mean, layers)
                lines.append(f"| {name} | {len(result.kept)} / {len(result.records)} | {where} | "
                             f"{_cell(mean, lo, hi, best, len(result.kept))} | {_or_dash(first_reaching(mean, layers))} |")
                key = f"{name} (n={len(result.kept)})"
                curves[key] = (layers, mean, lo, hi) if len(result.kept) > 1 else (layers, mean)
                colors[key] = palette[name]
            if curves:
                path = figures / f"layers_{slug(item_set.name)}_{slug(label)}.png"
                ax = plots.plot_layers(curves, title=f"{item_set.name} · {label} · all text positions restored",
                                       band="95% CI over each model's n items (none for n = 1)", colors=colors)
                plots.save(ax, path)
                lines += ["", f"![layer-wise {item_set.name} {label}](figures/{path.name})"]
            lines.append("")
    return lines


def token_section(study: Study, results: dict, figures: Path) -> list[str]:
    lines = ["## Token-wise: one position restored per cell (max over layers of the mean RR per group)", ""]
    for item_set in study.item_sets:
        for label in study.corruptions:
            runs = {m.name: results.get((m.name, item_set.name, label, "tokens")) for m in study.models}
            runs = {k: v for k, v in runs.items() if v is not None and v.kept}
            if not runs:
                continue
            present = [g for g in GROUPS if any(g in r.group_curves() for r in runs.values())]
            lines += [f"### {item_set.name} · {label}", "", "| model | n | " + " | ".join(present) + " |",
                      "|---|---|" + "---|" * len(present)]
            notes = []
            for name, result in runs.items():
                curves = result.group_curves()
                row = [_group_max(*curves[g][:2]) if g in curves else "–" for g in present]
                lines.append(f"| {name} | {len(result.kept)} | " + " | ".join(row) + " |")
                stem = f"{slug(name)}_{slug(item_set.name)}_{slug(label)}"
                plots.save(result.plot(title=f"{name} · {item_set.name} · {label} · by token group"),
                           figures / f"groups_{stem}.png")
                mean = result.mean_token_trace()
                if mean is not None:
                    title = f"{name} · {item_set.name} · {label} · {mean.metric['describe']}"
                    plots.save(mean.plot(title=title), figures / f"heatmap_{stem}.png")
                    notes.append(f"- {name}: the heatmap is the {mean.metric['describe']}")
            lines += ["", "The group table and curves average every kept item; a heatmap needs aligned text "
                      "positions, so it averages only the kept items that share the most common prompt:", ""]
            lines += notes + [""]
            for name in runs:
                stem = f"{slug(name)}_{slug(item_set.name)}_{slug(label)}"
                lines.append(f"![groups {name}](figures/groups_{stem}.png) ![heatmap {name}](figures/heatmap_{stem}.png)")
            lines.append("")
    return lines


def _group_max(layers, mean) -> str:
    """A group's maximum mean RR and where: one layer, "tied", or no layer for a flat curve."""
    where, best = peak(mean, layers)
    if best is None:
        return f"{num(np.nanmax(mean))} (flat)" if where == "flat" else "–"
    return f"{num(mean[best])} ({'layer ' + where if where[0].isdigit() else where})"


def write_report(study: Study, results: dict) -> Path:
    figures = study.out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    lines = [f"# Causal tracing study ({study.out.name})", "",
             f"Models: {', '.join(m.name for m in study.models)}. Item sets: "
             f"{', '.join(s.name for s in study.item_sets)}. Corruptions: {', '.join(study.corruptions)}. "
             f"Modes: {', '.join(study.modes)}.", "",
             "RR = (m_patched − m_corrupted) / (m_clean − m_corrupted) per item, averaged over the items that pass "
             "the checks (clean top-1 is the answer, the corrupted top-1 is not, the effect is large enough); "
             "95% percentile-bootstrap CIs over items.", ""]
    if "layers" in study.modes:
        lines += layer_section(study, results, figures)
    if "tokens" in study.modes:
        lines += token_section(study, results, figures)
    path = study.out / "report.md"
    path.write_text("\n".join(lines) + "\n")
    summary = {" / ".join(key): result.to_json() for key, result in results.items()}
    (study.out / "summary.json").write_text(json.dumps(_clean_floats(summary), indent=1, allow_nan=False))
    return path
