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
from lalm_lens.tracing.results import _clean_floats, first_reaching

GROUPS = ("early_prompt", "object", "late_prompt", "final", "transcript", "template")


def _cell(mean, lo, hi, i) -> str:
    return f"{mean[i]:.2f} [{lo[i]:.2f}, {hi[i]:.2f}]"


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
            curves = {}
            for name, result in runs.items():
                if not result.kept:
                    lines.append(f"| {name} | 0 / {len(result.records)} | – | – | – |")
                    continue
                layers, mean, lo, hi = result.layer_curve()
                best = int(np.nanargmax(mean))
                lines.append(f"| {name} | {len(result.kept)} / {len(result.records)} | {layers[best]} | "
                             f"{_cell(mean, lo, hi, best)} | {first_reaching(mean, layers)} |")
                curves[f"{name} (n={len(result.kept)})"] = (layers, mean, lo, hi)
            if curves:
                path = figures / f"layers_{slug(item_set.name)}_{slug(label)}.png"
                ax = plots.plot_layers(curves, title=f"{item_set.name} · {label} · all text positions restored",
                                       band="95% CI over each model's n items")
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
            for name, result in runs.items():
                curves = result.group_curves()
                row = [f"{np.nanmax(curves[g][1]):.2f} (layer {curves[g][0][int(np.nanargmax(curves[g][1]))]})"
                       if g in curves else "–" for g in present]
                lines.append(f"| {name} | {len(result.kept)} | " + " | ".join(row) + " |")
                stem = f"{slug(name)}_{slug(item_set.name)}_{slug(label)}"
                plots.save(result.plot(title=f"{name} · {item_set.name} · {label} · by token group"),
                           figures / f"groups_{stem}.png")
                mean = result.mean_token_trace()
                if mean is not None:
                    title = f"{name} · {item_set.name} · {label} · {mean.metric['describe']}"
                    plots.save(mean.plot(title=title), figures / f"heatmap_{stem}.png")
            lines.append("")
            for name in runs:
                stem = f"{slug(name)}_{slug(item_set.name)}_{slug(label)}"
                lines.append(f"![groups {name}](figures/groups_{stem}.png) ![heatmap {name}](figures/heatmap_{stem}.png)")
            lines.append("")
    return lines


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
