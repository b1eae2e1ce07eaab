"""Figures: ROME-style layer x token heatmaps, layer-wise curves with CIs, group curves.

Every figure says what it shows: the title names the model, the answer, the
corruption and the restored state (and "ill-posed: ..." when a check failed);
axes and colourbars are labelled; a shaded band says it is a 95 % CI over n
items; the audio span of a heatmap is one labelled row (`[375 audio tokens, 0–15.0 s]`).
"""

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


def value_label(result, value: str) -> str:
    if value == "recovery":
        return "recovery rate (RR)"
    return result.metric.get("describe", result.metric.get("name", value)) if hasattr(result, "metric") else value


def audio_label(result, n_audio: int) -> str:
    """`[375 audio tokens, 0–15.0 s]` (the time range when the input has one)."""
    if result.settings.get("audio_label"):
        return result.settings["audio_label"]
    span = result.settings.get("duration")
    return f"[{n_audio} audio tokens" + (f", 0–{span:.1f} s]" if span else "]")


def heatmap_rows(result, hide_template: bool = False) -> list:
    """Rows of a heatmap: a column index of `result.positions`, or a label for the audio span between them."""
    audio = [p for p, g in result.groups.items() if g == "audio" and p not in result.positions]
    rows, shown_audio = [], False
    for j, pos in enumerate(result.positions):
        if audio and not shown_audio and pos > min(audio):
            rows.append(audio_label(result, len(audio)))
            shown_audio = True
        if hide_template and result.groups[pos] == "template":
            continue
        rows.append(j)
    if audio and not shown_audio and result.positions and max(result.positions) > min(audio):
        rows.append(audio_label(result, len(audio)))
    return rows


def plot_heatmap(result, ax=None, value: str = "recovery", title: Optional[str] = None, cmap: str = "Purples",
                 hide_template: bool = False):
    """Rows = traced positions (labels coloured by group), columns = layers."""
    data = getattr(result, value).float().numpy().T  # [positions, layers]
    rows = heatmap_rows(result, hide_template)
    shown = np.array([data[r] if isinstance(r, int) else np.full(data.shape[1], np.nan) for r in rows])
    height = max(3.0, 0.22 * len(rows) + 1.8)
    ax = _axes(ax, (max(4.5, 0.35 * len(result.layers) + 3.5), height))
    finite = shown[np.isfinite(shown)]
    vmax = max(1.0, float(finite.max())) if value == "recovery" and finite.size else None
    import matplotlib

    colormap = matplotlib.colormaps[cmap].with_extremes(bad="#e8e8e8")
    image = ax.imshow(np.ma.masked_invalid(shown), aspect="auto", cmap=colormap,
                      vmin=0.0 if value == "recovery" else None, vmax=vmax, interpolation="nearest")
    ax.set_xticks(range(len(result.layers)))
    ax.set_xticklabels(result.layers, fontsize=7)
    ax.set_yticks(range(len(rows)))
    labels = [result.position_label(result.positions[r])[:24] if isinstance(r, int) else r for r in rows]
    ax.set_yticklabels(labels, fontsize=7)
    for tick, r in zip(ax.get_yticklabels(), rows):
        group = result.groups[result.positions[r]] if isinstance(r, int) else "audio"
        tick.set_color(GROUP_COLORS.get(group, "black"))
    ax.set_xlabel("layer")
    ax.set_ylabel("restored position")
    ax.set_title(title or result.title(f"restoring {result.restored()}"), fontsize=9)
    bar = ax.figure.colorbar(image, ax=ax, fraction=0.04, pad=0.02)
    bar.set_label(value_label(result, value))
    seen = {result.groups[result.positions[r]] for r in rows if isinstance(r, int)} | (
        {"audio"} if any(not isinstance(r, int) for r in rows) else set())
    handles = [_patch(GROUP_COLORS[g], g) for g in GROUP_COLORS if g in seen]
    ax.legend(handles=handles, loc="upper left", bbox_to_anchor=(1.25, 1.0), fontsize=7, frameon=False,
              title="token group", title_fontsize=7)
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


MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")
LINESTYLES = ("-", "--", "-.", ":")


def plot_layers(curves: Mapping[str, Curve], ax=None, value: str = "recovery", title: Optional[str] = None,
                ylabel: Optional[str] = None, xlabel: str = "layer", band: Optional[str] = None,
                colors: Optional[Mapping[str, str]] = None):
    """Layer-wise curves (several models, attributes or groups on one figure); `band` labels the shaded CIs
    (e.g. "95% CI over 60 items"); `colors` fixes a colour per name (token groups always get theirs), so a
    name keeps its colour across figures. Each line has its own marker and dash, the later ones drawn
    smaller, so curves that coincide (flat groups) stay visible."""
    ax = _axes(ax, (6.4, 3.8))
    shaded, drawn = False, {}
    for k, (name, item) in enumerate(curves.items()):
        layers, mean, lo, hi = _curve(item, value)
        color = (colors or {}).get(name, GROUP_COLORS.get(name))
        same = next((other for other, (ls, m) in drawn.items() if ls == layers and np.allclose(m, mean, atol=5e-3,
                                                                                              equal_nan=True)), None)
        drawn[name] = (layers, mean)
        (line,) = ax.plot(layers, mean, marker=MARKERS[k % len(MARKERS)], markersize=max(2.5, 7 - 1.5 * k),
                          linestyle=LINESTYLES[k % len(LINESTYLES)], linewidth=max(0.8, 2.2 - 0.4 * k),
                          label=name if same is None else f"{name} (same values as {same})", color=color,
                          zorder=2 + k)
        if lo is not None and hi is not None:
            ax.fill_between(layers, lo, hi, color=line.get_color(), alpha=0.2, linewidth=0)
            shaded = True
    if shaded and band:
        ax.fill_between([], [], [], color="grey", alpha=0.2, linewidth=0, label=f"shaded: {band}")
    ax.axhline(0.0, color="black", linewidth=0.5)
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel(xlabel)
    first = next(iter(curves.values()), None)
    ax.set_ylabel(ylabel or (value_label(first, value) if hasattr(first, "metric") else
                             "recovery rate (RR)" if value == "recovery" else value))
    ax.set_title(title or "layer-wise recovery", fontsize=9)
    ax.legend(fontsize=8, frameon=False)
    ax.figure.tight_layout()
    return ax


def plot_groups(group_curves: Mapping[str, tuple], ax=None, title: Optional[str] = None, band: Optional[str] = None):
    """Group-wise curves (early prompt / object / late prompt / final), one line per group."""
    order = [g for g in GROUP_COLORS if g in group_curves] + [g for g in group_curves if g not in GROUP_COLORS]
    return plot_layers({g: group_curves[g] for g in order}, ax=ax, title=title or "recovery by token group", band=band)


def _recovery_image(ax, data: np.ndarray, value: str, label: str, cmap: str = "Purples", **kw):
    finite = data[np.isfinite(data)]
    vmax = max(1.0, float(finite.max())) if value == "recovery" and finite.size else None
    image = ax.imshow(np.ma.masked_invalid(data), aspect="auto", interpolation="nearest", cmap=cmap,
                      vmin=0.0 if value == "recovery" else None, vmax=vmax, **kw)
    ax.figure.colorbar(image, ax=ax, fraction=0.04, pad=0.02).set_label(label)
    return image


def time_columns(windows, duration: float) -> tuple[list[float], list[int]]:
    """Column edges on the time axis (seconds) and, per column, the index of its window (-1: a gap no window
    covers), so every window is drawn at its own start and end (the last one partial)."""
    edges, which, cur = [0.0], [], 0.0
    for w, (a, b) in sorted(enumerate(windows), key=lambda x: x[1][0]):
        if a > cur + 1e-9:
            edges.append(a)
            which.append(-1)
        edges.append(b)
        which.append(w)
        cur = b
    if cur < duration - 1e-9:
        edges.append(duration)
        which.append(-1)
    return edges, which


def plot_time_heatmap(result, value: str = "recovery", title: Optional[str] = None):
    """Layers x time: each window drawn over its own time span, the clip's log-mel spectrogram underneath on
    the same time axis (same width: the colourbar has its own column), and the padding after the clip (when
    the family pads it) as a separate column at the right."""
    import matplotlib.pyplot as plt

    if not _interactive():
        import matplotlib

        matplotlib.use("Agg", force=False)
    data = getattr(result, value).float().numpy()  # [layers, windows]
    n = getattr(result, "clip_windows", len(result.windows))
    padding = n < len(result.windows)
    duration = result.settings.get("duration") or (result.windows[n][0] if padding else result.windows[-1][1])
    widths = [12.0] + ([1.4] if padding else []) + [0.3]
    fig = plt.figure(figsize=(8.2, 5.2), layout="constrained")
    grid = fig.add_gridspec(2, len(widths), width_ratios=widths, height_ratios=[3, 1])
    top = fig.add_subplot(grid[0, 0])
    bottom = fig.add_subplot(grid[1, 0], sharex=top)
    edges, which = time_columns([w[:2] for w in result.windows[:n]], duration)
    grid_values = np.array([data[:, w] if w >= 0 else np.full(len(result.layers), np.nan) for w in which]).T
    finite = data[np.isfinite(data)]
    vmax = max(1.0, float(finite.max())) if value == "recovery" and finite.size else None
    norm = dict(vmin=0.0 if value == "recovery" else None, vmax=vmax)
    import matplotlib

    cmap = matplotlib.colormaps["Purples"].with_extremes(bad="#e8e8e8")
    rows = np.arange(len(result.layers) + 1) - 0.5
    mesh = top.pcolormesh(edges, rows, np.ma.masked_invalid(grid_values), cmap=cmap, edgecolors="white",
                          linewidth=0.3, **norm)  # thin white edges: each window's own span stays visible
    top.set_ylim(len(result.layers) - 0.5, -0.5)
    top.set_yticks(range(len(result.layers)))
    top.set_yticklabels(result.layers, fontsize=7)
    top.set_ylabel("layer")
    top.set_title(title or result.title("audio windows"), fontsize=9)
    top.tick_params(labelbottom=False)
    if padding:
        pad = fig.add_subplot(grid[0, 1], sharey=top)
        pad.pcolormesh([0.0, 1.0], rows, np.ma.masked_invalid(data[:, -1:]), cmap=cmap, norm=mesh.norm)
        pad.set_xticks([])
        pad.tick_params(labelleft=False)
        pad.set_title("padding\nafter the clip", fontsize=7)
        pad.set_xlabel(f"{len(result.window_positions[-1])} pos.\n{result.windows[-1][0]:.1f}–"
                       f"{result.windows[-1][1]:.1f} s", fontsize=7)
    fig.colorbar(mesh, cax=fig.add_subplot(grid[0, -1])).set_label(value_label(result, value))
    if result.spectrogram:
        spec = np.asarray(result.spectrogram, dtype=float)
        bottom.imshow(spec, aspect="auto", origin="lower", cmap="magma", extent=(0, duration, 0, spec.shape[0]))
        bottom.set_ylabel("mel band")
    bottom.set_xlabel("time in the clip (s)")
    top.set_xlim(0, duration)
    return top


def plot_head_heatmaps(result, value: str = "recovery", title: Optional[str] = None):
    """Layer x head: the recovery of restoring each head, and its attention to the audio (clean, corrupted)."""
    import matplotlib.pyplot as plt

    if not _interactive():
        import matplotlib

        matplotlib.use("Agg", force=False)
    fig, axes = plt.subplots(1, 3, figsize=(12.5, 0.25 * len(result.layers) + 3.0))
    panels = [(getattr(result, value).float().numpy(), value_label(result, value), "restoring the head's z", "Purples"),
              (np.asarray(result.attention_clean), "attention mass to the audio", "attention final -> audio, clean",
               "Blues"),
              (np.asarray(result.attention_corrupted), "attention mass to the audio", "... corrupted", "Blues")]
    for ax, (data, label, name, cmap) in zip(axes, panels):
        if ax is axes[0]:
            _recovery_image(ax, data, value, label, cmap)
        else:
            image = ax.imshow(data, aspect="auto", interpolation="nearest", cmap=cmap, vmin=0, vmax=1)
            fig.colorbar(image, ax=ax, fraction=0.04, pad=0.02).set_label(label)
        ax.set_title(name, fontsize=8)
        ax.set_xlabel("head")
        ax.set_yticks(range(len(result.layers)))
        ax.set_yticklabels(result.layers, fontsize=7)
    axes[0].set_ylabel("layer")
    fig.suptitle(title or result.title("heads"), fontsize=9)
    fig.tight_layout()
    return axes[0]


def plot_lens(result, title: Optional[str] = None):
    """The metric at the final position per layer (clean, corrupted), and the answer's rank over the audio."""
    import matplotlib.pyplot as plt

    if not _interactive():
        import matplotlib

        matplotlib.use("Agg", force=False)
    fig, (left, right) = plt.subplots(1, 2, figsize=(11.5, 3.8), gridspec_kw=dict(width_ratios=[1, 1.4]))
    left.plot(result.layers, result.clean, marker="o", markersize=3, label="clean")
    if result.corrupted is not None:
        left.plot(result.layers, result.corrupted, marker="o", markersize=3, label="corrupted")
    left.set_xlabel("after layer")
    left.set_ylabel(result.metric.get("describe", result.metric.get("name")))
    left.set_title("final position", fontsize=8)
    left.legend(fontsize=8, frameon=False)
    if result.audio_positions:
        rank = np.log10(1 + np.asarray(result.audio_rank, dtype=float))
        times = result.audio_seconds
        extent = (times[0], times[-1], len(result.layers) - 0.5, -0.5) if times else None
        image = right.imshow(rank, aspect="auto", cmap="viridis_r", interpolation="nearest", extent=extent)
        fig.colorbar(image, ax=right, fraction=0.04, pad=0.02).set_label("log10(1 + rank of the answer)")
        right.set_xlabel("time in the clip (s)" if times else "audio position")
        right.set_ylabel("after layer")
        right.set_title(f"audio positions ({len(result.audio_positions)}): the answer's rank (0 = top-1)", fontsize=8)
    else:
        right.axis("off")
    model = result.settings.get("model")
    fig.suptitle(title or " · ".join(p for p in (model, f"answer {result.answer!r}", "logit lens") if p), fontsize=9)
    fig.tight_layout()
    return left


def save(ax, path: Union[str, Path]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ax.figure.savefig(path, dpi=130, bbox_inches="tight")
    import matplotlib.pyplot as plt

    plt.close(ax.figure)
    return path
