"""Pages of an SAE feature: its activation over the clip's time axis, and its top windows that play on click.

The activation page puts the clip's player and spectrogram above the feature's
activation at each audio position (same seconds axis and margins, so they line
up); hovering shows the token, its time and the value, clicking plays the
token's slice of the clip. Text positions are a bar chart below. The windows
page is a table; clicking a row loads that window (cut from its clip, embedded)
into the page's player and plays it through the runtime's `LL.playWindow`.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np

from lalm_lens.pages.builder import MARGIN, Page, read_clip


def activation_page(result, audio):
    page = Page(f"feature {result.feature} at {result.hook}" + (f" — {result.item}" if result.item else ""))
    page.text(result.summary())
    page.audio(audio)
    if audio is None and result.spectrogram:
        spec = np.asarray(result.spectrogram)
        page.figure("lalm-stored-spectrogram", dict(data=[dict(
            type="heatmap", z=spec.tolist(), x=np.linspace(0, result.duration, spec.shape[1], endpoint=False).tolist(),
            colorscale="Electric", showscale=False, hoverinfo="skip")],
            layout=dict(height=170, margin=MARGIN, xaxis=dict(title="seconds", range=[0, result.duration]),
                        yaxis=dict(showticklabels=False))))
    audio_idx, text_idx = result.audio(), result.text()
    page.data["feature"] = dict(positions=result.positions, values=result.values, tokens=result.tokens,
                                times=result.times, step=result.step, audio=audio_idx, text=text_idx)
    page.figure("lalm-feature-time", dict(data=[dict(
        type="bar", x=[result.times[j] + result.step / 2 for j in audio_idx], y=[result.values[j] for j in audio_idx],
        width=result.step, marker=dict(color="#1f77b4"), hoverinfo="none")],
        layout=dict(height=240, margin=MARGIN, yaxis=dict(title="activation"),
                    xaxis=dict(title="seconds (click a token to play it)", range=[0, result.duration]))))
    if text_idx:
        page.heading("text positions")
        page.figure("lalm-feature-text", dict(data=[dict(
            type="bar", x=[f"{result.positions[j]}: {result.tokens[j]}" for j in text_idx],
            y=[result.values[j] for j in text_idx], marker=dict(color="#ff7f0e"), hoverinfo="none")],
            layout=dict(height=260, margin=dict(MARGIN, b=90), yaxis=dict(title="activation"))))
    page.script(ACTIVATION_JS)
    return page


ACTIVATION_JS = r"""
BUILDERS["lalm-feature-time"] = (gd) => {
  const F = LL.DATA.feature;
  const at = (pt) => F.audio[pt.pointNumber];
  LL.tooltip(gd, (pt) => { const j = at(pt); return [["token", `${F.positions[j]} ${F.tokens[j]}`], ["group", "audio"],
    ["time", `${F.times[j].toFixed(3)}–${(F.times[j] + F.step).toFixed(3)} s`], ["activation", LL.num(F.values[j])]]; });
  gd.on("plotly_click", (ev) => { const j = at(ev.points[0]); LL.playWindow(F.times[j], F.times[j] + F.step); });
};
BUILDERS["lalm-feature-text"] = (gd) => {
  const F = LL.DATA.feature;
  LL.tooltip(gd, (pt) => { const j = F.text[pt.pointNumber];
    return [["token", `${F.positions[j]} ${F.tokens[j]}`], ["group", "text"], ["activation", LL.num(F.values[j])]]; });
};
"""


def _window_clip(window: dict) -> str:
    """The window cut from its clip, as a data URI (empty when the clip is gone)."""
    import soundfile

    if not Path(window["audio"]).is_file():
        return ""
    wave, rate = read_clip(window["audio"])
    cut = wave[int(round(window["start"] * rate)): int(round(window["end"] * rate))]
    buf = io.BytesIO()
    soundfile.write(buf, cut, rate, format="WAV", subtype="PCM_16")
    return "data:audio/wav;base64," + base64.b64encode(buf.getvalue()).decode()


def windows_page(result, audio):
    page = Page(f"feature {result.feature} at {result.hook}: top windows")
    page.text(result.summary())
    page.data["windows"] = [dict(w, clip=_window_clip(w)) for w in result.windows]
    page.html('<div class="controls"><audio id="lalm-audio" controls preload="none"></audio> '
              '<small>click a row to play its window</small></div>')
    rows = "".join(
        f'<tr class="lalm-window" data-row="{i}" style="cursor:pointer" onclick="FW.play({i})"><td>{i + 1}</td>'
        f"<td>{html.escape(str(w['item']))}</td><td>{w['start']:.2f}</td><td>{w['end']:.2f}</td>"
        f"<td>{w['activation']:.4g}</td><td>{w['position']}</td></tr>" for i, w in enumerate(result.windows))
    page.html("<table><tr><th>rank</th><th>item</th><th>start s</th><th>end s</th><th>max activation</th>"
              f"<th>position</th></tr>{rows}</table>")
    page.script(WINDOWS_JS)
    return page


WINDOWS_JS = r"""
const FW = {
  play(i) {
    const w = LL.DATA.windows[i], audio = document.getElementById("lalm-audio");
    if (!w.clip) { audio.dataset.playError = "the clip of this window is not in the page"; return; }
    if (audio.dataset.row !== String(i)) { audio.src = w.clip; audio.dataset.row = String(i); }
    LL.playWindow(0, w.end - w.start);
  },
};
"""
