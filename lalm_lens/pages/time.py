"""The audio-time page (`TimeTrace`): the clip's spectrogram above the layer x time-window map.

Both share the time axis in seconds; clicking a cell plays its window of the
clip (seek to the start, pause at the end) while the playhead moves over the
spectrogram. Without the clip the page shows the spectrogram the trace stored.
"""

from __future__ import annotations

import numpy as np

from lalm_lens.pages.builder import MARGIN
from lalm_lens.pages.common import trace_page



def time_page(result, audio):
    page = trace_page(result, audio, f"restoring {result.restored()} in "
                                     f"{result.settings.get('window_seconds', 0):g} s audio windows")
    if audio is None and result.spectrogram:
        spec = np.asarray(result.spectrogram)
        duration = result.settings.get("duration") or result.windows[-1][1]
        page.figure("lalm-stored-spectrogram", dict(data=[dict(
            type="heatmap", z=np.round(spec, 3).tolist(), x=np.linspace(0, duration, spec.shape[1], endpoint=False).tolist(),
            colorscale="Electric", showscale=False, hoverinfo="skip")],
            layout=dict(height=170, margin=MARGIN, xaxis=dict(title="seconds"), yaxis=dict(showticklabels=False))))
    page.data["trace"] = dict(layers=result.layers, windows=result.windows, window_positions=result.window_positions,
                              recovery=result.recovery.tolist(), patched=result.patched.tolist())
    starts, ends = [w[0] for w in result.windows], [w[1] for w in result.windows]
    contiguous = all(abs(e - s) < 1e-9 for e, s in zip(ends, starts[1:]))
    x = starts + ends[-1:] if contiguous else [(a + b) / 2 for a, b in result.windows]  # edges, or centers if gaps
    page.figure("lalm-time", dict(data=[dict(
        type="heatmap", z=np.round(result.recovery.numpy(), 4).tolist(), x=x, y=result.layers,
        colorscale="Viridis", hoverinfo="none", colorbar=dict(title=dict(text="RR")))],
        layout=dict(height=max(260, 40 + 22 * len(result.layers)), margin=MARGIN,
                    xaxis=dict(title="seconds (click a window to play it)", range=[0, result.settings.get("duration") or ends[-1]]),
                    yaxis=dict(title="layer"))))
    page.script(TIME_JS)
    return page


TIME_JS = r"""
BUILDERS["lalm-time"] = (gd) => {
  const T = LL.DATA.trace;
  LL.tooltip(gd, (pt) => {
    const [a, w] = pt.pointNumber, ps = T.window_positions[w], win = T.windows[w];
    return [["token", `audio positions ${ps[0]}–${ps[ps.length - 1]} (${ps.length})`], ["group", "audio"],
            ["window", `${win[0]}–${win[1]} s`], ["layer", String(T.layers[a])],
            ["RR", LL.num(T.recovery[a][w])], ["P_patched", LL.num(T.patched[a][w])]];
  });
  gd.on("plotly_click", (ev) => { const win = T.windows[ev.points[0].pointNumber[1]]; LL.playWindow(win[0], win[1]); });
};
"""
