// lalm-lens page runtime: tooltips, the clip's player and playhead, time windows that play on click.
// Inlined into every page; reads the page's data from <script id="lalm-data" type="application/json">.
"use strict";
window.LL = (function () {
  const DATA = JSON.parse(document.getElementById("lalm-data").textContent);
  const tip = document.getElementById("lalm-tip");
  const audio = document.getElementById("lalm-audio");
  let stopAt = null, ticking = false;

  // A number exactly as the JSON result holds it (null: RR undefined because clean = corrupted).
  function num(v) { return v === null || v === undefined ? "undefined" : String(v); }

  function showTip(lines, event) {
    tip.innerHTML = "";
    for (const [key, value] of lines) {
      const row = document.createElement("div");
      const k = document.createElement("b"); k.textContent = key + " ";
      const v = document.createElement("span"); v.textContent = value; v.dataset.key = key;
      row.append(k, v); tip.append(row);
    }
    tip.style.display = "block";
    const x = event ? event.clientX : 20, y = event ? event.clientY : 20;
    tip.style.left = Math.min(x + 14, window.innerWidth - tip.offsetWidth - 4) + "px";
    tip.style.top = Math.min(y + 14, window.innerHeight - tip.offsetHeight - 4) + "px";
  }

  // On hover over `gd`, show `describe(point)` ([key, value] pairs) in the page's tooltip.
  function tooltip(gd, describe) {
    gd.on("plotly_hover", (ev) => { const lines = describe(ev.points[0]); if (lines) showTip(lines, ev.event); });
    gd.on("plotly_unhover", () => { tip.style.display = "none"; });
  }

  // The playhead: a 2 px line over the spectrogram, moved by CSS (cheap: playback must not wait on redraws).
  function movePlayhead() {
    const spec = document.getElementById("lalm-spectrogram"), head = document.getElementById("lalm-playhead");
    if (!spec || !head || !spec._fullLayout) return;
    const L = spec._fullLayout;
    head.style.left = (L.xaxis.l2p(audio.currentTime) + L._size.l) + "px";
    head.style.top = L._size.t + "px"; head.style.height = L._size.h + "px";
  }

  function tick() {
    if (!audio) return;
    stopCheck();
    movePlayhead();
    if (!audio.paused) requestAnimationFrame(tick); else ticking = false;
  }

  // Play [start, end) seconds of the clip: seek to start, pause at end.
  function playWindow(start, end) {
    if (!audio) return;
    audio.dataset.windowStart = start; audio.dataset.windowEnd = end;
    stopAt = end; audio.currentTime = start;
    const started = audio.play();
    if (started && started.catch) started.catch((err) => { audio.dataset.playError = String(err); });
  }

  // Stop on time: a timer aimed just before the end, then short polls (timeupdate alone fires every ~250 ms).
  let timer = null;
  function stopCheck() {
    clearTimeout(timer);
    if (stopAt === null || audio.paused) return;
    const left = stopAt - audio.currentTime;
    if (left <= 0.002) { audio.pause(); audio.currentTime = stopAt; stopAt = null; return; }
    timer = setTimeout(stopCheck, left > 0.03 ? (left * 1000) / audio.playbackRate - 20 : 2);
  }

  if (audio) {
    audio.addEventListener("play", () => { if (!ticking) { ticking = true; requestAnimationFrame(tick); } });
    audio.addEventListener("playing", stopCheck);
    audio.addEventListener("seeked", () => { movePlayhead(); stopCheck(); });
    audio.addEventListener("timeupdate", stopCheck);
  }

  function playClip() { if (audio) { stopAt = null; audio.dataset.windowStart = 0; audio.dataset.windowEnd = audio.duration; audio.currentTime = 0; audio.play(); } }

  // Draw every figure of the page, then mark the page rendered (the tests time this).
  async function draw(builders) {
    const t0 = performance.now();
    const times = {};
    for (const fig of DATA.figures) {
      const gd = document.getElementById(fig.id), t = performance.now();
      await Plotly.newPlot(gd, fig.data, fig.layout, Object.assign({ responsive: true, displaylogo: false, scrollZoom: true }, fig.config || {}));
      if (builders[fig.id]) builders[fig.id](gd, fig);
      times[fig.id] = performance.now() - t;
    }
    document.body.dataset.figureMs = JSON.stringify(times);
    const spec = document.getElementById("lalm-spectrogram");
    if (spec) {
      spec.on("plotly_click", (ev) => playWindow(ev.points[0].x, DATA.audio_duration));
      spec.style.position = "relative";
      const head = document.createElement("div");
      head.id = "lalm-playhead";
      head.style.cssText = "position:absolute;width:2px;background:cyan;pointer-events:none;left:0";
      spec.append(head); movePlayhead();
    }
    document.body.dataset.renderMs = String(performance.now() - t0);
    document.body.dataset.rendered = "1";
  }

  return { DATA, num, tooltip, playWindow, playClip, draw, showTip };
})();
