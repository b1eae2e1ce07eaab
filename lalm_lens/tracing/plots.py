"""Figures: ROME-style layer x token heatmaps, layer-wise curves with CIs, group curves."""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Optional, Union

import numpy as np

GROUP_COLORS = {
    "template": "#9e9e9e", "audio": "#1f77b4", "transcript": "#17becf", "early_prompt": "#2ca02c",
    "object": "#d62728", "late_prompt": "#ff7f0e", "final": "#9467bd",
}


def _axes(ax, figsize):
    import matplotlib

    if ax is None:
        if not _interactive():
            matplotlib.use("Agg", force=False)
        import matplotlib.pyplot as plt

        _, ax = plt.subplots(figsize=figsize)
    return ax


def _interactive() -> bool:
    import matplotlib

    return matplotlib.get_backend().lower() not in ("agg", "pdf", "svg", "ps", "cairo", "template")


def plot_heatmap(result, ax=None, value: str = "recovery", title: Optional[str] = None, cmap: str = "Purples"):
    """Rows = traced positions (token labels coloured by group), columns = layers."""
    data = getattr(result, value).float().numpy().T  # [positions, layers]
    height = max(3.0, 0.22 * len(result.positions) + 1.5)
    ax = _axes(ax, (max(4.0, 0.35 * len(result.layers) + 3), height))
    finite = data[np.isfinite(data)]
    vmax = max(1.0, float(finite.max())) if value == "recovery" and finite.size else None
    image = ax.imshow(data, aspect="auto", cmap=cmap, vmin=0.0 if value == "recovery" else None, vmax=vmax,
                      interpolation="nearest")
    ax.set_xticks(range(len(result.layers)))
    ax.set_xticklabels(result.layers, fontsize=7)
    ax.set_yticks(range(len(result.positions)))
    labels = [f"{lab!s}".replace("\n", "\\n")[:18] for lab in result.token_labels]
    ax.set_yticklabels(labels, fontsize=7)
    for tick, pos in zip(ax.get_yticklabels(), result.positions):
        tick.set_color(GROUP_COLORS.get(result.groups[pos], "black"))
    ax.set_xlabel("layer")
    window = result.settings.get("window", 1)
    restored = result.states + (f" (window {window})" if window > 1 else "")
    ax.set_title(title or f"restoring {restored}: {'recovery rate' if value == 'recovery' else 'P(' + result.answer + ')'}")
    ax.figure.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    seen = {result.groups[p] for p in result.positions}
    handles = [_patch(GROUP_COLORS[g], g) for g in GROUP_COLORS if g in seen]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.18, 1.0), fontsize=7, frameon=False)
    ax.figure.tight_layout()
    return ax


def _patch(color, label):
    from matplotlib.patches import Patch

    return Patch(color=color, label=label)


Curve = Union["TraceResult", tuple]  # noqa: F821  (a result, or (layers, mean[, lo, hi]))


def _curve(item, value: str):
    if hasattr(item, "recovery"):
        return list(item.layers), getattr(item, value).float().numpy(), None, None
    layers, mean, *ci = item
    lo, hi = (ci + [None, None])[:2]
    return list(layers), np.asarray(mean, float), None if lo is None else np.asarray(lo), None if hi is None else np.asarray(hi)


def plot_layers(curves: Mapping[str, Curve], ax=None, value: str = "recovery", title: Optional[str] = None,
                ylabel: Optional[str] = None):
    """Layer-wise curves (several models, attributes or groups on one figure), CIs shaded."""
    ax = _axes(ax, (6.0, 3.6))
    for name, item in curves.items():
        layers, mean, lo, hi = _curve(item, value)
        (line,) = ax.plot(layers, mean, marker="o", markersize=3, label=name, color=GROUP_COLORS.get(name))
        if lo is not None and hi is not None:
            ax.fill_between(layers, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.axhline(0.0, color="black", linewidth=0.5)
    ax.set_xlabel("layer")
    ax.set_ylabel(ylabel or ("recovery rate" if value == "recovery" else value))
    ax.set_title(title or "layer-wise recovery")
    ax.legend(fontsize=8, frameon=False)
    ax.figure.tight_layout()
    return ax


def plot_groups(group_curves: Mapping[str, tuple], ax=None, title: Optional[str] = None):
    """Group-wise curves (early prompt / object / late prompt / final), one line per group."""
    order = [g for g in GROUP_COLORS if g in group_curves] + [g for g in group_curves if g not in GROUP_COLORS]
    return plot_layers({g: group_curves[g] for g in order}, ax=ax, title=title or "recovery by token group")


def save(ax, path: Union[str, Path]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ax.figure.savefig(path, dpi=130, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(ax.figure)
    return path

