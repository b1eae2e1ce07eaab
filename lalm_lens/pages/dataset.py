"""Dataset pages: mean RR per layer (or per token group and layer) over items, the 95% CI on hover.

They read the numbers of `DatasetResult.to_json()` (what `summary.json` holds), so
`lalm-lens report` can draw them from the saved file as well.
"""

from __future__ import annotations

from typing import Any

from lalm_lens.pages.builder import Page

BAND = "rgba(60,90,200,0.15)"


def curves_of(summary: dict[str, Any]) -> dict[str, dict]:
    """`{name: curve}` of a dataset summary: the mean curve (layers mode) or one per token group."""
    if "mean_recovery" in summary:
        return {"mean RR": summary["mean_recovery"]}
    return dict(summary.get("group_recovery") or {})


def curve_traces(curves: dict[str, dict], layers: list[int]) -> list[dict]:
    """Each curve as a line with its CI band (the band is drawn, the line carries the hover)."""
    traces = []
    for name, c in curves.items():
        traces.append(dict(type="scatter", x=layers + layers[::-1], y=list(c["ci_high"]) + list(c["ci_low"])[::-1],
                           mode="lines", fill="toself", fillcolor=BAND, line=dict(width=0), hoverinfo="skip",
                           showlegend=False))
        traces.append(dict(type="scatter", mode="lines+markers", x=layers, y=c["mean"], name=name, hoverinfo="none"))
    return traces


def add_curves(page: Page, fig_id: str, summary: dict[str, Any], n: str) -> None:
    """The figure of a dataset summary, with a tooltip: layer, mean RR, its 95% CI, items."""
    curves = curves_of(summary)
    page.data.setdefault("curves", {})[fig_id] = dict(layers=summary["layers"], n=n, names=list(curves),
                                                       curves=list(curves.values()))
    page.figure(fig_id, dict(data=curve_traces(curves, summary["layers"]),
                             layout=dict(height=380, margin=dict(l=60, r=20, t=10, b=40), xaxis=dict(title="layer", dtick=1),
                                         yaxis=dict(title="mean RR (95% CI band)"))))
    page.script(f'BUILDERS["{fig_id}"] = (gd) => curveTip(gd, "{fig_id}");')


CURVE_JS = r"""
function curveTip(gd, id) {
  const C = LL.DATA.curves[id];
  LL.tooltip(gd, (pt) => {
    const k = (pt.curveNumber - 1) / 2, c = C.curves[k], i = pt.pointIndex;
    return [["curve", C.names[k]], ["layer", String(C.layers[i])], ["mean RR", LL.num(c.mean[i])],
            ["95% CI", `${LL.num(c.ci_low[i])} to ${LL.num(c.ci_high[i])}`], ["items", C.n]];
  });
}
"""


def summary_page(summary: dict[str, Any], title: str, text: str = "") -> Page:
    """A page of one dataset summary (the JSON of `DatasetResult.to_json`)."""
    page = Page(title)
    if text:
        page.text(text)
    counts = summary.get("counts", {})
    page.table(["items", "kept", *sorted(counts)], [[summary.get("n_items"), summary.get("n_kept"),
                                                     *(counts[k] for k in sorted(counts))]])
    page.script(CURVE_JS)
    if curves_of(summary):
        add_curves(page, "lalm-curves", summary, f"{summary.get('n_kept')} kept items")
    return page


def dataset_page(result, audio):
    page = summary_page(result.to_json(), result.title(), result.summary())
    page.audio(audio)
    return page
