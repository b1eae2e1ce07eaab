"""Pages of the position traces: the token map (`TokenTrace`) and the layer curve (`LayerTrace`).

The token map has one row per traced position and one column per layer. The
audio span starts collapsed into one row (its mean RR; click it or the button to
expand); expanded, each audio row plays its slice of the clip on click. Rows keep
readable labels at any length: the map shows about `ROWS` rows at once and
zooms/pans (scroll, drag), plotly thinning the labels when zoomed out.
"""

from __future__ import annotations

from lalm_lens.pages.common import position_times, token_text, trace_page

ROWS = 48  # rows visible at once before panning


def token_page(result, audio):
    page = trace_page(result, audio, f"restoring {result.restored()}, one position per cell")
    page.data["trace"] = dict(
        layers=result.layers, positions=result.positions, tokens=[token_text(result, p) for p in result.positions],
        groups=[result.groups[p] for p in result.positions], recovery=result.recovery.tolist(),
        patched=result.patched.tolist(), times={str(p): t for p, t in position_times(result).items()},
        probability=bool(result.metric.get("probability", result.metric.get("name") == "answer_prob")), rows=ROWS)
    n_audio = sum(g == "audio" for g in page.data["trace"]["groups"])
    if n_audio:
        page.html(f'<div class="controls"><button id="lalm-expand" onclick="toggleAudio()">expand the {n_audio} audio '
                  'rows</button><small>scroll to zoom, drag to pan; click an audio row to hear it</small></div>')
    page.figure("lalm-map", dict(data=[], layout=dict(
        margin=dict(l=230, r=20, t=10, b=40), xaxis=dict(title="layer", dtick=1 if len(result.layers) <= 40 else None),
        yaxis=dict(autorange="reversed", type="category", automargin=False), dragmode="pan")))
    page.script(TOKEN_JS)
    return page


def layer_page(result, audio):
    page = trace_page(result, audio, f"restoring {result.restored()} of {len(result.positions)} positions")
    groups = sorted({result.groups[p] for p in result.positions})
    page.data["trace"] = dict(layers=result.layers, recovery=result.recovery.tolist(), patched=result.patched.tolist(),
                              restored=f"{len(result.positions)} positions ({', '.join(groups)})",
                              first=f"{result.positions[0]}: {token_text(result, result.positions[0])}"
                              if result.positions else "")
    page.figure("lalm-curve", dict(data=[dict(type="scatter", mode="lines+markers", x=result.layers,
                                              y=result.recovery.tolist(), name="RR", hoverinfo="none")],
                                   layout=dict(height=380, xaxis=dict(title="layer", dtick=1), yaxis=dict(title="RR"),
                                               margin=dict(l=60, r=20, t=10, b=40))))
    page.script(LAYER_JS)
    return page


LAYER_JS = r"""
BUILDERS["lalm-curve"] = (gd) => {
  const T = LL.DATA.trace;
  LL.tooltip(gd, (pt) => [["restored", T.restored], ["first", T.first], ["layer", String(T.layers[pt.pointIndex])],
    ["RR", LL.num(T.recovery[pt.pointIndex])], ["P_patched", LL.num(T.patched[pt.pointIndex])]]);
};
"""

TOKEN_JS = r"""
const T = LL.DATA.trace;
let expanded = false;
// rows of the map: [position index (column of `recovery`), or -1 for the collapsed audio span]
function mapRows() {
  const rows = [];
  let spanAdded = false;
  T.positions.forEach((p, j) => {
    if (T.groups[j] === "audio" && !expanded) { if (!spanAdded) { rows.push(-1); spanAdded = true; } }
    else rows.push(j);
  });
  return rows;
}
function audioColumns() { return T.groups.map((g, j) => g === "audio" ? j : -1).filter((j) => j >= 0); }
function spanMean(values) {
  const cols = audioColumns();
  return values.map((row) => { const v = cols.map((j) => row[j]).filter((x) => x !== null);
    return v.length ? v.reduce((a, b) => a + b, 0) / v.length : null; });
}
function rowLabel(j) {
  if (j === -1) { const c = audioColumns(); return `[${c.length} audio tokens ${T.positions[c[0]]}–${T.positions[c[c.length - 1]]}] ▸`; }
  return `${T.positions[j]}: ${T.tokens[j]}`.replace(/\n/g, "\\n");
}
function mapTraces() {
  const rows = mapRows(), mean = spanMean(T.recovery);
  const z = rows.map((j) => T.layers.map((_, a) => j === -1 ? mean[a] : T.recovery[a][j]));
  const flat = T.recovery.flat().filter((x) => x !== null);
  return [{ type: "heatmap", z: z, x: T.layers, y: rows.map(rowLabel), colorscale: "Viridis", hoverinfo: "none",
            zmin: flat.reduce((a, b) => Math.min(a, b), 0), zmax: flat.reduce((a, b) => Math.max(a, b), 1), colorbar: { title: { text: "RR" } } }];
}
function mapLayout(gd) {
  const n = mapRows().length, shown = Math.min(n, T.rows);
  const layout = Object.assign({}, gd ? gd.layout : LL.DATA.figures.find((f) => f.id === "lalm-map").layout);
  layout.height = Math.max(260, 60 + 16 * shown);
  layout.yaxis = Object.assign({}, layout.yaxis, { autorange: false, range: [shown - 0.5, -0.5] });
  if (n <= T.rows) layout.yaxis.autorange = "reversed";
  return layout;
}
const mapFig = LL.DATA.figures.find((f) => f.id === "lalm-map");
mapFig.data = mapTraces();
mapFig.layout = mapLayout(null);
function toggleAudio() {
  expanded = !expanded;
  const gd = document.getElementById("lalm-map");
  Plotly.react(gd, mapTraces(), mapLayout(gd));
  const b = document.getElementById("lalm-expand");
  if (b) b.textContent = (expanded ? "collapse" : "expand") + ` the ${audioColumns().length} audio rows`;
}
BUILDERS["lalm-map"] = (gd) => {
  LL.tooltip(gd, (pt) => {
    const j = mapRows()[pt.pointNumber[0]], a = pt.pointNumber[1], layer = String(T.layers[a]);
    if (j === -1) {
      const mean = spanMean(T.recovery)[a], meanP = spanMean(T.patched)[a];
      return [["token", `the ${audioColumns().length} audio positions (click to expand)`], ["group", "audio"],
              ["layer", layer], ["mean RR", LL.num(mean)], ["mean P_patched", LL.num(meanP)]];
    }
    const lines = [["token", JSON.stringify(T.tokens[j])], ["index", String(T.positions[j])], ["group", T.groups[j]],
                   ["layer", layer], ["RR", LL.num(T.recovery[a][j])],
                   [T.probability ? "P_patched" : "m_patched", LL.num(T.patched[a][j])]];
    const t = T.times[String(T.positions[j])];
    if (t) lines.push(["time", `${t[0].toFixed(3)}–${t[1].toFixed(3)} s (click to play)`]);
    return lines;
  });
  gd.on("plotly_click", (ev) => {
    const j = mapRows()[ev.points[0].pointNumber[0]];
    if (j === -1) { toggleAudio(); return; }
    const t = T.times[String(T.positions[j])];
    if (t) LL.playWindow(t[0], t[1]);
  });
};
"""
