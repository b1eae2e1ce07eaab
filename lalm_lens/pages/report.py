"""`write_report(folder)`: a page for every result saved under a folder, and `index.html` linking them.

Recognised files: every saved result (`Result.save`: traces `trace_*.json`,
`lens.json`, knockouts, edge scores, feature views), dataset summaries
(`summary.json` of `trace-dataset`) and a study's
`summary.json` (its runs' tables and curves, with CIs on hover). A trace's clip is
the `.wav` beside it (`demo_clip.wav`, or the only clip there). All pages share one
`plotly.min.js` at the top of the folder.
"""

from __future__ import annotations

import html
import json
from pathlib import Path
from typing import Optional

from lalm_lens.pages.builder import BUNDLE, Page
from lalm_lens.pages.dataset import CURVE_JS, add_curves, summary_page


def _fmt(x, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def study_page(summary: dict, title: str) -> Page:
    """A study's runs (`"model / set / corruption / mode"` -> dataset summary): the tables of `report.md`, and each
    run's curves with their CIs on hover."""
    page = Page(title)
    page.html('<p><a href="report.md">report.md</a> (the same tables with the static figures)</p>')
    page.script(CURVE_JS)
    layer_rows, group_rows = [], []
    for key, run in summary.items():
        model, item_set, corruption, mode = (key.split(" / ") + ["?"] * 4)[:4]
        kept = f"{run.get('n_kept')} / {run.get('n_items')}"
        if mode == "layers":
            c = run.get("mean_recovery") or {}
            peak = c.get("peak_layer")
            ci = "–" if peak is None else (f"{_fmt(c['peak'])} [{_fmt(c['ci_low'][run['layers'].index(peak)])}, "
                                           f"{_fmt(c['ci_high'][run['layers'].index(peak)])}]")
            first = c.get("first_layer_at_half")
            layer_rows.append([model, item_set, corruption, kept, "–" if peak is None else peak, ci,
                               "–" if first is None else first])
        else:
            groups = run.get("group_recovery") or {}
            group_rows.append(([model, item_set, corruption, kept], {
                g: f"{_fmt(c.get('peak'))} (layer {c.get('peak_layer')})" for g, c in groups.items()}))
    if layer_rows:
        page.heading("Layer-wise: all text positions restored at each layer")
        page.table(["model", "item set", "corruption", "items kept / traced", "peak layer",
                    "mean RR at peak [95% CI]", "first layer with mean RR >= 0.5"], layer_rows)
    if group_rows:
        page.heading("Token-wise: max over layers of the mean RR per group")
        names = list(dict.fromkeys(g for _, cells in group_rows for g in cells))
        page.table(["model", "item set", "corruption", "items kept / traced"] + names,
                   [row + [cells.get(g, "–") for g in names] for row, cells in group_rows])
    for i, (key, run) in enumerate(summary.items()):
        if run.get("mean_recovery") or run.get("group_recovery"):
            page.heading(key)
            add_curves(page, f"lalm-run-{i}", run, f"{run.get('n_kept')} kept items")
    return page


def _clip(folder: Path) -> Optional[Path]:
    """The clip of the results in `folder`: `demo_clip.wav`, else the only `.wav` that is no page's own copy."""
    clips = [p for p in sorted(folder.glob("*.wav")) if not p.with_suffix(".json").exists()]
    named = [p for p in clips if p.name == "demo_clip.wav"]
    return named[0] if named else clips[0] if len(clips) == 1 else None


def page_of(path: Path) -> Optional[tuple[Page, str]]:
    """The page of one saved file and what it shows, or None when the file is no result."""
    from lalm_lens.pages import build_page
    from lalm_lens.result import KINDS, Result
    from lalm_lens.tracing.results import TraceResult

    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError):
        return None
    if not isinstance(data, dict):
        return None
    if "counts" in data and "n_items" in data:  # a dataset summary (with its records or, older, without)
        return summary_page(data, f"dataset trace · {path.parent.name}"), f"dataset ({data.get('mode')})"
    kind = data.get("kind", data.get("mode"))
    if kind in KINDS and "schema" in data or "p_patched" in data:  # a saved result (a trace's numbers have no schema)
        result = Result.load(path)
        what = f"{result.kind} trace" if isinstance(result, TraceResult) else result.what or result.kind
        return build_page(result, _clip(path.parent)), what
    if data and all(" / " in k and isinstance(v, dict) and "counts" in v for k, v in data.items()):
        return study_page(data, f"study · {path.parent.name}"), f"study ({len(data)} runs)"
    return None


def write_report(folder, progress=print) -> Path:
    """Pages beside every result under `folder`, and `folder/index.html` linking them."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ValueError(f"OUT_DIR {folder}: no such folder")
    bundle = folder / BUNDLE
    links = []
    for path in sorted(folder.rglob("*.json")):
        found = page_of(path)
        if found is None:
            continue
        page, what = found
        out = page.write(path.with_suffix(".html"), js=bundle)
        links.append((out.relative_to(folder).as_posix(), page.title, what))
        progress(f"wrote {out}")
    if not links:
        raise ValueError(f"OUT_DIR {folder}: no result files (trace_*.json, lens.json, summary.json) under it")
    items = "".join(f'<li><a href="{html.escape(href)}">{html.escape(href)}</a> — {html.escape(what)}: '
                    f'{html.escape(title)}</li>' for href, title, what in links)
    extra = "".join(f'<li><a href="{p.name}">{p.name}</a></li>' for p in sorted(folder.glob("*.md")))
    index = folder / "index.html"
    index.write_text(f'<!DOCTYPE html><html lang="en"><head><meta charset="utf-8"><link rel="icon" href="data:,">'
                     f'<title>lalm-lens · {folder.name}</title></head><body style="font-family:system-ui,sans-serif"><h1>lalm-lens results: '
                     f'{html.escape(folder.name)}</h1><ul>{items}{extra}</ul></body></html>\n')
    return index
