"""The logit-lens page (`LensResult`): the metric per layer at the final position (clean vs corrupted, the top
tokens on hover) and the answer's rank over the audio positions (click a column to hear that slice)."""

from __future__ import annotations

import numpy as np

from lalm_lens.pages.builder import Page


def lens_page(result, audio):
    page = Page(f"logit lens · answer {result.answer!r}")
    page.text(result.summary())
    page.audio(audio)
    seconds = result.audio_seconds
    step = (seconds[-1] - seconds[0]) / (len(seconds) - 1) if seconds and len(seconds) > 1 else None
    page.data["lens"] = dict(layers=result.layers, clean=result.clean, corrupted=result.corrupted,
                             clean_top=result.clean_top, corrupted_top=result.corrupted_top,
                             positions=result.audio_positions, seconds=seconds, step=step, rank=result.audio_rank)
    lines = [dict(type="scatter", mode="lines+markers", x=result.layers, y=result.clean, name="clean", hoverinfo="none")]
    if result.corrupted is not None:
        lines.append(dict(type="scatter", mode="lines+markers", x=result.layers, y=result.corrupted, name="corrupted",
                          hoverinfo="none"))
    page.figure("lalm-lens", dict(data=lines, layout=dict(height=360, margin=dict(l=60, r=20, t=10, b=40),
                                                          xaxis=dict(title="layer", dtick=1),
                                                          yaxis=dict(title=result.metric.get("name", "metric")))))
    if result.audio_positions:
        page.heading("the answer's rank at each audio position (log10(1 + rank); 0 = top-1)")
        x = seconds if seconds else result.audio_positions
        page.figure("lalm-rank", dict(data=[dict(type="heatmap", z=np.log10(1 + np.asarray(result.audio_rank)).round(3)
                                                 .tolist(), x=x, y=result.layers, colorscale="Viridis", reversescale=True,
                                                 hoverinfo="none")],
                                      layout=dict(height=max(260, 40 + 22 * len(result.layers)), dragmode="pan",
                                                  margin=dict(l=60, r=20, t=10, b=40), yaxis=dict(title="layer"),
                                                  xaxis=dict(title="seconds" if seconds else "audio position"))))
    page.script(LENS_JS)
    return page


LENS_JS = r"""
const L = LL.DATA.lens;
const tops = (top) => top.map((t) => `${JSON.stringify(t[0])} ${t[1].toFixed(3)}`).join(", ");
BUILDERS["lalm-lens"] = (gd) => LL.tooltip(gd, (pt) => {
  const i = pt.pointIndex, clean = pt.curveNumber === 0;
  return [["layer", String(L.layers[i])], [clean ? "clean" : "corrupted", LL.num((clean ? L.clean : L.corrupted)[i])],
          ["top tokens", tops((clean ? L.clean_top : L.corrupted_top)[i])]];
});
BUILDERS["lalm-rank"] = (gd) => {
  LL.tooltip(gd, (pt) => {
    const [a, j] = pt.pointNumber, lines = [["index", String(L.positions[j])], ["group", "audio"],
      ["layer", String(L.layers[a])], ["rank of the answer", String(L.rank[a][j])]];
    if (L.seconds) lines.push(["time", `${L.seconds[j].toFixed(3)} s (click to play)`]);
    return lines;
  });
  gd.on("plotly_click", (ev) => { if (L.seconds) { const t = L.seconds[ev.points[0].pointNumber[1]]; LL.playWindow(t, t + L.step); } });
};
"""
