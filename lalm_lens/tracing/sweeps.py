"""Sweeps beyond token positions: when in the clip (`audio_time_trace`) and which heads (`head_trace`).

Both are causal traces — the same corruption, metric, checks and engines (the
fast engine re-runs only what a patch changes; here the suffix starts inside the
audio) — over cells of their own:
- `audio_time_trace`: at each layer, the audio positions whose start time falls in
  one window of `window_seconds` (from the family's token timing,
  `inp.meta["audio_seconds"]`), restored together: a layer x time map (`TimeTrace`).
- `head_trace`: at each layer, one head's attention output (`z`) restored, at every
  position or at the final one: a layer x head map (`HeadTrace`), with the
  attention each head pays from the final position to the audio, clean vs corrupted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, ClassVar, Mapping, Optional

import numpy as np
import torch
from torch import Tensor
from transformer_lens.utilities import get_act_name

from lalm_lens.inputs.prepared import PreparedInput
from lalm_lens.inputs.spectrogram import spectrogram

from lalm_lens.tracing.cells import Cell, window_layers
from lalm_lens.tracing.checks import warn_if_ill_posed
from lalm_lens.tracing.results import TraceResult, describe_curve
from lalm_lens.tracing.pipeline import Layout, TraceSpec, finish, prepare

if TYPE_CHECKING:
    from lalm_lens.interface import LALM


PADDING = "padding after the clip"


def time_windows(inp: PreparedInput, window_seconds: float) -> list[tuple[float, float, list[int]]]:
    """`(start, end, positions)` of every window holding audio positions of the clip (row 0), then, when the
    family pads the clip (Voxtral: to 30 s), one last `(duration, padded end, positions)` for the audio
    positions past the clip's end, which no window holds (see `TimeTrace.padding`)."""
    seconds = (getattr(inp, "meta", None) or {}).get("audio_seconds")
    if not seconds or seconds[0] is None:
        raise ValueError("this input's audio positions have no timing (DeSTA's 64 vectors are Q-Former queries over "
                         "the whole clip): an audio-time sweep needs a family whose audio tokens follow the clip")
    if not (isinstance(window_seconds, (int, float)) and math.isfinite(window_seconds) and window_seconds > 0):
        raise ValueError(f"window_seconds must be a positive number of seconds, got {window_seconds!r}")
    duration = len(inp.waveform) / inp.sampling_rate
    n = max(1, math.ceil(duration / window_seconds - 1e-9))
    buckets: list[list[int]] = [[] for _ in range(n)]
    padding, last = [], duration
    for pos, t in zip(inp.audio_positions[0].tolist(), seconds[0].tolist()):
        if t < duration:
            buckets[min(int(t // window_seconds), n - 1)].append(pos)
        else:  # positions past the clip's end (Voxtral pads to 30 s): their own remainder, never a window's
            padding.append(pos)
            last = max(last, t)
    step = (seconds[0][1] - seconds[0][0]).item() if len(seconds[0]) > 1 else 0.0
    windows = [(k * window_seconds, min((k + 1) * window_seconds, duration), b) for k, b in enumerate(buckets) if b]
    return windows + ([(duration, last + step, padding)] if padding else [])


@dataclass
class TimeTrace(TraceResult):
    """`patched[layer, w]`: the audio positions of time window `windows[w]` restored together at each layer.

    With `padding`, the last column is not a window of the clip: it holds the audio positions past the clip's
    end (Voxtral pads every clip to 30 s; those positions differ between the clean and the corrupted run, since
    the log-mel normalisation depends on the clip), restored together as one remainder."""

    windows: list = field(default_factory=list)  # [start, end] seconds per column
    window_positions: list = field(default_factory=list)  # the positions of each window
    spectrogram: Optional[list] = None  # [n_mels, frames] log-mel of the clip, for the figure
    padding: bool = False  # the last column is the padding after the clip
    kind: ClassVar[str] = "audio_time"

    def expected_shape(self) -> tuple[int, ...]:
        return (len(self.layers), len(self.windows))

    @property
    def clip_windows(self) -> int:
        """The number of columns that are windows of the clip (all but the padding remainder)."""
        return len(self.windows) - int(self.padding)

    def span_name(self, w: int) -> str:
        return PADDING if w >= self.clip_windows else "clip"

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame([dict(layer=l, span=self.span_name(b), start=w[0], end=w[1], n_positions=len(ps),
                                  score=float(self.patched[a, b]), recovery=float(self.recovery[a, b]))
                             for a, l in enumerate(self.layers)
                             for b, (w, ps) in enumerate(zip(self.windows, self.window_positions))])

    def summary(self) -> str:
        rec = self.recovery.numpy()
        clip, n = rec[:, : self.clip_windows], self.clip_windows
        lines = self.header()
        if np.isfinite(clip).any():
            a, b = divmod(int(np.nanargmax(clip)), clip.shape[1])
            w = self.windows[b]
            lines.append(f"restoring {self.restored()} of the audio positions in {self.settings['window_seconds']:g} s "
                         f"windows: best cell layer {self.layers[a]}, {w[0]:.2f}–{w[1]:.2f} s "
                         f"({len(self.window_positions[b])} positions), RR {_num(clip[a, b])}")
            starts = [f"{w[0]:.2f} s" for w in self.windows[:n]]
            lines.append("by window (max over layers): " + describe_curve(np.nanmax(clip, 0), starts, axis="window"))
        if self.padding:
            best = describe_curve(rec[:, -1], self.layers)
            lines.append(f"{PADDING} ({len(self.window_positions[-1])} audio positions from "
                         f"{self.windows[-1][0]:.2f} s, the family's padding; no window holds them): {best}")
        return "\n".join(lines)

    def numbers(self) -> dict:
        rec = self.recovery.numpy()
        clip = rec[:, : self.clip_windows]
        out = dict(super().numbers(), windows=self.windows[: self.clip_windows],
                   recovery=np.where(np.isfinite(clip), clip, None).tolist())
        if np.isfinite(clip).any():
            a, b = divmod(int(np.nanargmax(clip)), clip.shape[1])
            out["best"] = dict(layer=self.layers[a], window=self.windows[b], recovery=float(clip[a, b]))
        if self.padding:
            pad = rec[:, -1]
            out["padding_after_clip"] = dict(start=self.windows[-1][0], end=self.windows[-1][1],
                                             n_positions=len(self.window_positions[-1]),
                                             recovery=np.where(np.isfinite(pad), pad, None).tolist())
        return out

    def plot(self, ax=None, title: Optional[str] = None, value: str = "recovery"):
        from lalm_lens.tracing.plots import plot_time_heatmap

        return plot_time_heatmap(self, value=value, title=title or self.title(
            f"restoring {self.restored()} in {self.settings['window_seconds']:g} s audio windows"))


def _num(x: float) -> str:
    return f"{x:.2f}".replace("-0.00", "0.00")


@dataclass
class HeadTrace(TraceResult):
    """`patched[layer, head]`: one head's attention output (`z`) restored at `positions`, and each head's
    attention from the final position to the audio (`attention_clean` / `attention_corrupted`, `[layer][head]`)."""

    attention_clean: list = field(default_factory=list)
    attention_corrupted: list = field(default_factory=list)
    kind: ClassVar[str] = "heads"

    def expected_shape(self) -> tuple[int, ...]:
        return (len(self.layers), len(self.attention_clean[0]) if self.attention_clean else 0)

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame([dict(layer=l, head=h, score=float(self.patched[a, h]), recovery=float(self.recovery[a, h]),
                                  attention_to_audio_clean=self.attention_clean[a][h],
                                  attention_to_audio_corrupted=self.attention_corrupted[a][h])
                             for a, l in enumerate(self.layers) for h in range(self.patched.shape[1])])

    def top_heads(self, k: int = 5) -> list[tuple[int, int, float]]:
        rec = self.recovery.nan_to_num(-1e9)
        order = rec.flatten().argsort(descending=True)[:k].tolist()
        return [(self.layers[i // rec.shape[1]], i % rec.shape[1], float(rec.flatten()[i])) for i in order]

    def summary(self) -> str:
        where = self.settings.get("head_positions")
        lines = self.header()
        lines.append(f"restoring one head's z at {where} position(s): top heads (layer.head RR) "
                     + ", ".join(f"{l}.{h} {_num(r)}" for l, h, r in self.top_heads()))
        att = np.array(self.attention_clean)
        a, h = divmod(int(att.argmax()), att.shape[1])
        lines.append(f"most attention from the final position to the audio (clean): head {self.layers[a]}.{h} "
                     f"({att[a, h]:.2f} of its pattern; corrupted {np.array(self.attention_corrupted)[a, h]:.2f})")
        return "\n".join(lines)

    def numbers(self) -> dict:
        return dict(super().numbers(), top_heads=self.top_heads(), attention_clean=self.attention_clean,
                    attention_corrupted=self.attention_corrupted)

    def plot(self, ax=None, title: Optional[str] = None, value: str = "recovery"):
        from lalm_lens.tracing.plots import plot_head_heatmaps

        return plot_head_heatmaps(self, value=value, title=title or self.title(
            f"restoring one head's z at {self.settings.get('head_positions')} position(s)"))


def audio_time_trace(model: "LALM", clean: PreparedInput, corruption="silence", *, answer, metric=None,
                     window_seconds: float = 0.5, states: str = "resid_post", layers=None, window: int = 1,
                     engine="fast", min_effect: Optional[float] = None) -> TimeTrace:
    """When in the clip: restore clean `states` of the audio positions in each time window, at each layer."""
    spec = TraceSpec(model, mode="layers", states=states, layers=layers, window=window, corruption=corruption,
                     metric=metric, engine=engine, min_effect=min_effect)
    windows = time_windows(clean, window_seconds)
    duration = len(clean.waveform) / clean.sampling_rate
    padding = bool(windows) and windows[-1][0] >= duration  # the remainder past the clip's end
    L = model.cfg.n_layers
    layout = Layout([Cell(window_layers(l, spec.window, L), tuple(ps)) for l in spec.layers for _, _, ps in windows],
                    positions=[ps[0] for _, _, ps in windows], shape=(len(spec.layers), len(windows)),
                    labels=[f"{a:.2f}-{b:.2f} s" for a, b, _ in windows[: len(windows) - padding]]
                    + ([PADDING] if padding else []), result=TimeTrace, settings=dict(window_seconds=window_seconds))
    prep = prepare(model, spec, clean, answer, lambda groups: layout)
    result = finish(model, prep, prep.patched(model), padding=padding, windows=[[a, b] for a, b, _ in windows],
                    window_positions=[ps for _, _, ps in windows],
                    spectrogram=spectrogram(clean.waveform, clean.sampling_rate))
    warn_if_ill_posed(result.checks, f"the audio-time trace of {result.answer!r}")
    return result


@torch.no_grad()
def attention_to_audio(model: "LALM", inputs: dict[str, Tensor], final: int, audio: list[int],
                       extra_hooks=()) -> list[list[float]]:
    """Each head's attention mass from `final` to the `audio` positions, `[layer][head]` (mean over rows)."""
    out = [None] * model.cfg.n_layers
    idx = torch.tensor(audio, device=model.device)

    def keep(pattern, hook):
        out[int(hook.name.split(".")[1])] = pattern[:, :, final, idx].sum(-1).float().mean(0).tolist()

    hooks = list(extra_hooks) + [(get_act_name("pattern", l), keep) for l in range(model.cfg.n_layers)]
    model.run_with_hooks(inputs, fwd_hooks=hooks, return_type=None)
    return out


def head_trace(model: "LALM", clean: Mapping, corruption="silence", *, answer, metric=None,
               positions: str = "all", layers=None, engine="fast", min_effect: Optional[float] = None) -> HeadTrace:
    """Which heads: restore one head's attention output (`z`) at every position (`positions="all"`) or at
    the final one (`"final"`), at each layer."""
    if positions not in ("all", "final"):
        raise ValueError(f"positions must be 'all' or 'final', got {positions!r}")
    spec = TraceSpec(model, mode="layers", states="z", layers=layers, corruption=corruption, metric=metric,
                     engine=engine, min_effect=min_effect)
    H = model.cfg.n_heads

    def layout(groups: list[str]) -> Layout:
        where = list(range(len(groups))) if positions == "all" else [len(groups) - 1]
        return Layout([Cell((l,), tuple(where), (h,)) for l in spec.layers for h in range(H)], positions=where,
                      labels=[str(p) for p in where], shape=(len(spec.layers), H), result=HeadTrace,
                      settings=dict(head_positions=positions))

    prep = prepare(model, spec, clean, answer, layout)
    patched = prep.patched(model)
    job = prep.job
    audio = [p for p, g in enumerate(prep.labels.groups) if g == "audio"]
    all_layers = [attention_to_audio(model, job.clean, job.final, audio),
                  attention_to_audio(model, job.corrupted.batch(), job.final, audio, job.corrupted.hooks())]
    att = [[row[l] for l in spec.layers] for row in all_layers]
    result = finish(model, prep, patched, attention_clean=att[0], attention_corrupted=att[1])
    warn_if_ill_posed(result.checks, f"the head trace of {result.answer!r}")
    return result
