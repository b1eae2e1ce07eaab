"""Seeing and hearing an SAE feature: its activation over the clip's time axis, and its top audio windows.

    act = feature_activation(model, sae, inp, 17)     # every position; audio positions carry their times
    act.plot(); act.to_html("f17.html", audio=clip)    # over the time axis, above the spectrogram
    top = top_windows(model, sae, items, 17, window_seconds=0.5, k=10)
    write_clips(top, "clips/")                         # each window cut from its clip as a WAV

The feature is read at the SAE's `hook_sae_acts_post` (spliced for the call
when it is not already). At an LM hook the values are per prompt position and
the audio positions get the family's token times (`inp.meta["audio_seconds"]`);
at `hook_audio_embeds` the first axis is the audio tokens themselves, so only
audio positions have values. Windows tile the clip as the audio-time sweep does
(`time_windows`): a window holds the audio positions whose start time falls in
it, and scores the largest activation among them.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, ClassVar, Iterable, Optional, Sequence, Union

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from lalm_lens.features.sae import SAE
from lalm_lens.result import Result
from lalm_lens.tracing.numbers import to_floats

if TYPE_CHECKING:
    from lalm_lens.inputs.prepared import PreparedInput
    from lalm_lens.interface import LALM


def _check_feature(sae: SAE, feature) -> int:
    if isinstance(feature, bool) or not isinstance(feature, (int, np.integer)) or not 0 <= feature < sae.cfg.d_sae:
        raise ValueError(f"feature={feature!r}: the SAE has features 0..{sae.cfg.d_sae - 1}")
    return int(feature)


def _spliced(model: "LALM", sae: SAE):
    """The SAE's splice path, splicing it for the call (removed after) when it is not spliced yet."""
    try:
        return model.sae_hook(sae), nullcontext()
    except ValueError:
        return None, model.saes([sae])


def feature_acts(model: "LALM", sae: SAE,
                 inp: "PreparedInput") -> tuple[Float[Tensor, "n d_sae"], list[int], str]:
    """`(acts [n, d_sae], positions, splice path)`: every feature at the prompt positions with a value (row 0)."""
    if inp.batch_size != 1:
        raise ValueError(f"inp has {inp.batch_size} rows: feature views read one clip at a time")
    where, splice = _spliced(model, sae)
    with splice:
        where = where or model.sae_hook(sae)
        name = f"{where}.hook_sae_acts_post"
        with torch.no_grad():
            _, cache = model.run_with_cache(inp, names_filter=lambda n: n == name)
    acts = cache[name].float().cpu()
    audio = inp.audio_positions[0].tolist()
    length = inp.input_ids.shape[1]
    if where.endswith("hook_audio_embeds"):  # [n_audio_tokens, d_sae]: row 0's audio tokens, in order
        return acts[: len(audio)], audio, where
    if acts.ndim == 3 and acts.shape[1] == length:
        return acts[0], list(range(length)), where
    raise ValueError(f"the SAE at {where} has activations of shape {tuple(acts.shape)}, not one per prompt position: "
                     "feature views need an LM hook or hook_audio_embeds (audio-encoder frames have no prompt position)")


def _timing(inp: "PreparedInput") -> tuple[dict[int, float], float, float]:
    """`({audio position: start s}, seconds per audio token, clip duration)`."""
    seconds = (getattr(inp, "meta", None) or {}).get("audio_seconds")
    if not seconds or seconds[0] is None:
        raise ValueError("this input's audio positions have no timing (DeSTA's Q-Former queries cover the whole clip): "
                         "feature views need a family whose audio tokens follow the clip")
    t = seconds[0].tolist()
    step = t[1] - t[0] if len(t) > 1 else len(inp.waveform) / inp.sampling_rate
    return dict(zip(inp.audio_positions[0].tolist(), t)), step, len(inp.waveform) / inp.sampling_rate


@dataclass
class FeatureActivation(Result):
    """One feature's activation at every position of one clip's prompt (`times[j]`: start s, None for text)."""

    hook: str
    feature: int
    positions: list[int]
    values: list[float]
    tokens: list[str]
    times: list[Optional[float]]
    step: float  # seconds per audio token
    duration: float  # the clip's seconds
    item: Optional[str] = None
    spectrogram: Optional[list] = None  # [n_mels, frames] log-mel of the clip, for the figure
    settings: dict = field(default_factory=dict)
    kind: ClassVar[str] = "feature_activation"

    @classmethod
    def _from_json(cls, d: dict, source: str) -> "FeatureActivation":
        d["values"] = to_floats(d["values"])  # NaN was saved as null
        return super()._from_json(d, source)

    def audio(self) -> list[int]:
        """Indices j of the audio positions that lie in the clip."""
        return [j for j, t in enumerate(self.times) if t is not None and t < self.duration]

    def text(self) -> list[int]:
        return [j for j, t in enumerate(self.times) if t is None]

    def summary(self) -> str:
        head = f"feature {self.feature} at {self.hook}" + (f", item {self.item}" if self.item else "")
        lines = [head]
        for name, idx in (("audio", self.audio()), ("text", self.text())):
            if idx:
                v = np.asarray([self.values[j] for j in idx])
                j = idx[int(v.argmax())]
                when = f" ({self.times[j]:.2f} s)" if self.times[j] is not None else f" ({self.tokens[j]!r})"
                lines.append(f"{name}: {len(idx)} positions, mean {v.mean():.4g}, active at {int((v > 0).sum())}, "
                             f"max {v.max():.4g} at position {self.positions[j]}{when}")
        return "\n".join(lines)

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame([dict(position=p, token=tok, group="text" if t is None else "audio", start=t,
                                  end=None if t is None else t + self.step, activation=v)
                             for p, tok, t, v in zip(self.positions, self.tokens, self.times, self.values)])

    def plot(self, title: Optional[str] = None):
        """The activation over the clip's seconds above its spectrogram (shared x), text positions beside;
        returns the activation's axes (`.figure` is the whole figure)."""
        from lalm_lens.tracing.plots import _axes

        ax = _axes(None, (10, 4.5))
        fig = ax.figure
        fig.clear()
        grid = fig.add_gridspec(2, 2, width_ratios=[3, 1], height_ratios=[1.3, 1])
        top = fig.add_subplot(grid[0, 0])
        spec = fig.add_subplot(grid[1, 0], sharex=top)
        side = fig.add_subplot(grid[:, 1])
        idx = self.audio()
        x, y = [self.times[j] for j in idx], [self.values[j] for j in idx]
        edges = x + [min(x[-1] + self.step, self.duration)] if x else []  # the last token's step ends too
        top.step(edges, y + y[-1:], where="post", color="#1f77b4")
        top.set_ylabel("activation")
        top.set_title(title or self.summary().splitlines()[0], fontsize=9)
        if self.spectrogram:
            s = np.asarray(self.spectrogram)
            spec.imshow(s, aspect="auto", origin="lower", extent=[0, self.duration, 0, s.shape[0]], cmap="magma")
        spec.set_xlim(0, self.duration)
        spec.set_xlabel("seconds")
        spec.set_ylabel("mel")
        text = self.text()
        if not text:
            side.text(0.5, 0.5, "no text positions\nat this hook", ha="center", va="center", fontsize=8)
            side.axis("off")
        side.barh(range(len(text)), [self.values[j] for j in text], color="#ff7f0e")
        side.set_yticks(range(len(text)))
        side.set_yticklabels([self.tokens[j][:14] for j in text], fontsize=6)
        side.invert_yaxis()
        side.set_title("text positions", fontsize=8)
        fig.tight_layout()
        return top


def feature_activation(model: "LALM", sae: SAE, inp: "PreparedInput", feature: int,
                       item: Optional[str] = None) -> FeatureActivation:
    """`feature`'s activation at every position of `inp` (one clip), with the audio positions' times."""
    from lalm_lens.inputs.spectrogram import spectrogram

    feature = _check_feature(sae, feature)
    start, step, duration = _timing(inp)
    acts, positions, hook = feature_acts(model, sae, inp)
    tokens = inp.str_tokens[0]
    return FeatureActivation(
        hook=hook, feature=feature, positions=positions, values=acts[:, feature].tolist(),
        tokens=[tokens[p] if p < len(tokens) else str(p) for p in positions], times=[start.get(p) for p in positions],
        step=step, duration=duration, item=item,
        spectrogram=np.round(np.asarray(spectrogram(np.asarray(inp.waveform, np.float32), inp.sampling_rate)), 3).tolist(),
        settings=dict(model=model.name_or_path))


@dataclass
class TopWindows(Result):
    """The windows of `window_seconds` (over a dataset's clips) where a feature is largest, best first."""

    hook: str
    feature: int
    window_seconds: float
    windows: list[dict]  # item, audio (file), start, end, activation, position (of the max)
    n_items: int
    n_windows: int  # windows scanned
    settings: dict = field(default_factory=dict)
    kind: ClassVar[str] = "feature_windows"

    def summary(self) -> str:
        lines = [f"feature {self.feature} at {self.hook}: top {len(self.windows)} of {self.n_windows} windows of "
                 f"{self.window_seconds:g} s over {self.n_items} clips"]
        lines += [f"{w['activation']:.4g}  {w['item']}  {w['start']:.2f}–{w['end']:.2f} s" for w in self.windows]
        return "\n".join(lines)

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame(self.windows)

    def plot(self, title: Optional[str] = None):
        from lalm_lens.tracing.plots import _axes

        ax = _axes(None, (6, 0.3 * len(self.windows) + 1.5))
        ax.barh(range(len(self.windows)), [w["activation"] for w in self.windows])
        ax.set_yticks(range(len(self.windows)))
        ax.set_yticklabels([f"{w['item']} {w['start']:.2f}–{w['end']:.2f} s" for w in self.windows], fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("max activation in the window")
        ax.set_title(title or f"feature {self.feature} at {self.hook}: top windows", fontsize=9)
        ax.figure.tight_layout()
        return ax


def _check_window(window_seconds) -> float:
    if isinstance(window_seconds, bool) or not isinstance(window_seconds, (int, float)) \
            or not math.isfinite(window_seconds) or window_seconds <= 0:
        raise ValueError(f"window_seconds must be a positive number of seconds, got {window_seconds!r}")
    return float(window_seconds)


def scan(model: "LALM", sae: SAE, items: Iterable, features: Sequence[int], window_seconds: float = 0.5):
    """Per item: `(item, hook, [(start, end, {feature: (max, position)})])`, one entry per window of its clip."""
    from lalm_lens.tracing.sweeps import time_windows

    for item in items:
        inp = model.prepare(item.audio, item.question, answer_prefix=item.answer_prefix, options=item.options)
        acts, positions, hook = feature_acts(model, sae, inp)
        row = {p: j for j, p in enumerate(positions)}
        duration = len(inp.waveform) / inp.sampling_rate
        out = []
        for start, end, ps in time_windows(inp, window_seconds):
            if start >= duration:  # the padding remainder past the clip (Voxtral): no window of the clip
                continue
            sub = acts[[row[p] for p in ps]][:, list(features)]
            best, where = sub.max(0)
            out.append((start, end, {f: (float(best[i]), ps[int(where[i])]) for i, f in enumerate(features)}))
        yield item, hook, out


def top_windows_many(model: "LALM", sae: SAE, items: Sequence, features: Sequence[int], window_seconds: float = 0.5,
                     k: int = 10) -> dict[int, TopWindows]:
    """`top_windows` for several features in one pass over the items."""
    features = [_check_feature(sae, f) for f in features]
    window_seconds = _check_window(window_seconds)
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"k must be a positive number of windows, got {k!r}")
    items = list(items)
    if not items:
        raise ValueError("items is empty: pass at least one item (lalm_lens.tracing.dataset.read_items)")
    found: dict[int, list[dict]] = {f: [] for f in features}
    n, hook = 0, None
    for item, hook, windows in scan(model, sae, items, features, window_seconds):
        n += len(windows)
        for start, end, per in windows:
            for f, (value, pos) in per.items():
                found[f].append(dict(item=item.id, audio=str(item.audio), start=start, end=end, activation=value,
                                     position=pos))
    return {f: TopWindows(hook=hook, feature=f, window_seconds=window_seconds, n_items=len(items), n_windows=n,
                          windows=sorted(rows, key=lambda w: -w["activation"])[:k],
                          settings=dict(model=model.name_or_path))
            for f, rows in found.items()}


def top_windows(model: "LALM", sae: SAE, items: Sequence, feature: int, window_seconds: float = 0.5,
                k: int = 10) -> TopWindows:
    """The `k` windows of `window_seconds` across `items` (dataset `Item`s) where `feature` is largest."""
    return top_windows_many(model, sae, items, [feature], window_seconds, k)[_check_feature(sae, feature)]


def feature_means(model: "LALM", sae: SAE, items: Sequence) -> Float[Tensor, " d_sae"]:
    """Every feature's mean activation over the audio positions of `items` (`[d_sae]`)."""
    total, count = torch.zeros(sae.cfg.d_sae), 0
    for item in items:
        inp = model.prepare(item.audio, item.question, answer_prefix=item.answer_prefix, options=item.options)
        acts, positions, _ = feature_acts(model, sae, inp)
        audio = set(inp.audio_positions[0].tolist())
        rows = [j for j, p in enumerate(positions) if p in audio]
        total += acts[rows].sum(0)
        count += len(rows)
    return total / max(count, 1)


def write_clips(result: TopWindows, folder: Union[str, Path]) -> list[Path]:
    """Each window cut from its clip (samples `[start·rate, end·rate)`, the file's own rate) as a WAV file."""
    import soundfile

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for rank, w in enumerate(result.windows):
        if not Path(w["audio"]).is_file():
            raise FileNotFoundError(f"window {rank}: its clip {w['audio']} is gone; write_clips needs the item's audio")
        info = soundfile.info(w["audio"])
        a, b = int(round(w["start"] * info.samplerate)), int(round(w["end"] * info.samplerate))
        wave, rate = soundfile.read(w["audio"], start=a, stop=b, dtype="float32")
        path = folder / f"feature{result.feature}_{rank:02d}_{w['item']}_{w['start']:.2f}-{w['end']:.2f}s.wav"
        soundfile.write(str(path), wave, rate)
        paths.append(path)
    return paths
