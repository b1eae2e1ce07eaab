"""`Page`: one HTML file of figures, text, tables and the clip, viewable from file:// or any static server.

Plotly draws the figures; its offline bundle is written once as `plotly.min.js`
beside the pages (or wherever `js` says) and shared by every page of a report.
The page's numbers travel as one JSON block read by the small inlined runtime
(`runtime.js`: tooltips, the clip's player and playhead, windows that play on
click). A clip up to `EMBED_LIMIT` bytes is embedded as base64 WAV; a larger one
is written beside the page as `<page>.wav`.
"""

from __future__ import annotations

import base64
import html
import io
import json
import math
import os
from pathlib import Path
from typing import Any, Optional, Sequence, Union

import numpy as np

RUNTIME = (Path(__file__).parent / "runtime.js").read_text()
BUNDLE = "plotly.min.js"
EMBED_LIMIT = 512 * 1024
MARGIN = dict(l=60, r=90, t=10, b=35)  # figures on a time axis share it, so their seconds line up
RATE = 16000  # the clip is stored at this rate (mono, 16-bit): enough to hear speech, small enough to embed
Audio = Union[str, Path, tuple]  # a file, or (waveform, sampling rate)

STYLE = """
body{font-family:system-ui,sans-serif;margin:1.2em 2em;color:#222;max-width:1400px}
h1{font-size:1.3em} h2{font-size:1.1em;margin-top:1.4em} pre{background:#f6f6f6;padding:.6em;white-space:pre-wrap}
#lalm-tip{position:fixed;display:none;background:#fff;border:1px solid #888;padding:.3em .5em;font:12px monospace;
 pointer-events:none;z-index:10;box-shadow:1px 1px 4px #aaa;max-width:40em}
table{border-collapse:collapse;margin:.5em 0} td,th{border:1px solid #ccc;padding:.2em .5em;font-size:.9em}
.controls button{margin-right:.5em} .warn{color:#a00;font-weight:bold} nav a{margin-right:1em}
"""


def _finite(x):
    """NaN/inf -> None, recursively (JSON null), so the page reads the numbers the JSON result holds."""
    if isinstance(x, dict):
        return {k: _finite(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_finite(v) for v in x]
    if isinstance(x, np.ndarray):
        return _finite(x.tolist())
    if isinstance(x, (np.floating, np.integer)):
        x = x.item()
    return None if isinstance(x, float) and not math.isfinite(x) else x


def read_clip(audio: Audio) -> tuple[np.ndarray, int]:
    """The clip as mono float32 at `RATE`."""
    import soundfile
    import torch
    import torchaudio

    if isinstance(audio, tuple):
        wave, rate = audio
    else:
        if not Path(audio).is_file():
            raise ValueError(f"audio={audio!s}: no such file (pass the clip the result was traced on, or None)")
        wave, rate = soundfile.read(str(audio), dtype="float32", always_2d=True)
        wave = wave.mean(1)
    wave = np.asarray(wave, dtype=np.float32).reshape(-1)
    if rate != RATE:
        wave = torchaudio.functional.resample(torch.from_numpy(wave), int(rate), RATE).numpy()
    return wave, RATE


class Page:
    """Collects sections, then `write(path)` renders the HTML (and the bundle / clip beside it)."""

    def __init__(self, title: str):
        self.title = title
        self.body: list[str] = []
        self.figures: list[dict] = []
        self.data: dict[str, Any] = {}
        self.scripts: list[str] = []
        self.clip: Optional[tuple[np.ndarray, int]] = None

    # ------------------------------------------------------------ content
    def heading(self, text: str) -> None:
        self.body.append(f"<h2>{html.escape(text)}</h2>")

    def text(self, text: str, warn: bool = False) -> None:
        self.body.append(f"<pre{' class=warn' if warn else ''}>{html.escape(text)}</pre>")

    def html(self, fragment: str) -> None:
        self.body.append(fragment)

    def table(self, header: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        cell = lambda tag, v: f"<{tag}>{html.escape(str(v))}</{tag}>"  # noqa: E731
        head = "".join(cell("th", h) for h in header)
        lines = "".join("<tr>" + "".join(cell("td", v) for v in row) + "</tr>" for row in rows)
        self.body.append(f"<table><tr>{head}</tr>{lines}</table>")

    def figure(self, fig_id: str, fig, height: Optional[int] = None) -> None:
        """A plotly figure (a `go.Figure` or a dict) drawn into `<div id=fig_id>`."""
        import plotly.io

        spec = json.loads(plotly.io.to_json(fig, validate=False)) if not isinstance(fig, dict) else fig
        if height:
            spec.setdefault("layout", {})["height"] = height
        self.figures.append(dict(id=fig_id, data=spec.get("data", []), layout=spec.get("layout", {})))
        self.body.append(f'<div id="{fig_id}" class="figure"></div>')

    def script(self, js: str) -> None:
        """Page-specific JavaScript; `LL.draw(builders)` calls `builders[fig_id](gd, fig)` after each figure."""
        self.scripts.append(js)

    def audio(self, audio: Optional[Audio]) -> None:
        """The clip's player and spectrogram (click it to play from there; a playhead follows playback)."""
        if audio is None:
            return
        from lalm_lens.inputs.spectrogram import spectrogram

        self.clip = read_clip(audio)
        wave, rate = self.clip
        duration = len(wave) / rate
        self.data["audio_duration"] = duration
        spec = np.asarray(spectrogram(wave, rate))
        times = np.linspace(0, duration, spec.shape[1], endpoint=False)
        fig = dict(data=[dict(type="heatmap", z=np.round(spec, 3).tolist(), x=times.round(4).tolist(),
                              colorscale="Electric", showscale=False, hovertemplate="%{x:.2f} s<extra></extra>")],
                   layout=dict(height=170, margin=MARGIN, xaxis=dict(title="seconds", range=[0, duration]),
                               yaxis=dict(title="mel", showticklabels=False)))
        self.body.append('<div class="controls"><audio id="lalm-audio" controls preload="auto" src="@AUDIO@"></audio> '
                         '<button id="lalm-play" onclick="LL.playClip()">▶ play the clip</button> '
                         '<small>click the spectrogram or a time window to play it</small></div>')
        self.figure("lalm-spectrogram", fig)

    # ------------------------------------------------------------ output
    def write(self, path: Union[str, Path], js: Optional[Union[str, Path]] = None) -> Path:
        """Write the page; the plotly bundle goes to `js` (default: beside the page) unless already there."""
        path = Path(path)
        if path.suffix != ".html":
            raise ValueError(f"path={path!s}: a page is written as .html")
        path.parent.mkdir(parents=True, exist_ok=True)
        bundle = Path(js) if js is not None else path.parent / BUNDLE
        write_bundle(bundle)
        src = Path(os.path.relpath(bundle.resolve(), path.parent.resolve())).as_posix()
        audio_src = self._write_clip(path) if self.clip is not None else ""
        data = json.dumps(_finite(dict(self.data, figures=self.figures)), allow_nan=False, separators=(",", ":"))
        page = TEMPLATE.format(title=html.escape(self.title), style=STYLE, bundle=html.escape(src),
                               body="\n".join(self.body).replace("@AUDIO@", audio_src),
                               data=data.replace("</", "<\\/"), runtime=RUNTIME, scripts="\n".join(self.scripts))
        path.write_text(page)
        return path

    def _write_clip(self, path: Path) -> str:
        import soundfile

        buf = io.BytesIO()
        soundfile.write(buf, self.clip[0], self.clip[1], format="WAV", subtype="PCM_16")
        if buf.tell() <= EMBED_LIMIT:
            return "data:audio/wav;base64," + base64.b64encode(buf.getvalue()).decode()
        wav = path.with_suffix(".wav")
        wav.write_bytes(buf.getvalue())
        return wav.name


def write_bundle(path: Path) -> None:
    """plotly.js, once per folder of pages (rewritten when the installed plotly's bundle differs in size)."""
    from plotly.offline import get_plotlyjs

    js = get_plotlyjs()
    if not path.is_file() or path.stat().st_size != len(js.encode()):
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(js)


TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<link rel="icon" href="data:,">
<style>{style}</style>
<script src="{bundle}"></script></head>
<body>
<h1>{title}</h1>
{body}
<div id="lalm-tip"></div>
<script id="lalm-data" type="application/json">{data}</script>
<script>{runtime}</script>
<script>const BUILDERS = {{}};
{scripts}
LL.draw(BUILDERS);</script>
</body></html>
"""
