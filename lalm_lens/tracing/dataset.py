"""`trace_dataset`: causal traces over many items, with the paper's filters and 95% CIs.

Items file: JSONL, one object per line —
`{"id": "...", "audio": "clips/a.wav", "question": "...", "options": ["male", "female"],
  "answer": "male", "answer_prefix": "The speaker's gender is"}` — `audio` relative
to the file's folder; `id` and `answer_prefix` optional. Results are appended to
`out` (JSONL, one line per item) as they come, so a rerun resumes where it stopped.
Items whose clean prediction is not the answer, or whose corrupted prediction
still is, are dropped and counted; an item that fails (a missing file, a
multi-token answer) is recorded with its error and the run goes on.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Optional, Union

import numpy as np
import torch

from lalm_lens.tracing.corruption import Corruption, make_corruption
from lalm_lens.tracing.groups import final_position
from lalm_lens.tracing.trace import answer_token, causal_trace


@dataclass
class Item:
    id: str
    audio: str
    question: str
    answer: str
    options: Optional[list[str]] = None
    answer_prefix: Optional[str] = None
    meta: dict = field(default_factory=dict)  # other fields of the item (kept in the records)


def read_items(path: Union[str, Path]) -> list[Item]:
    """Items from a JSONL file; relative audio paths are resolved against its folder."""
    path = Path(path)
    items = []
    for n, line in enumerate(path.read_text().splitlines()):
        if not line.strip():
            continue
        d = json.loads(line)
        missing = {"audio", "question", "answer"} - set(d)
        if missing:
            raise ValueError(f"{path.name} line {n + 1}: missing field(s) {sorted(missing)}")
        audio = Path(d["audio"])
        audio = audio if audio.is_absolute() else path.parent / audio
        extra = {k: v for k, v in d.items() if k not in ("id", "audio", "question", "answer", "options", "answer_prefix")}
        items.append(Item(id=str(d.get("id", n)), audio=str(audio), question=d["question"], answer=d["answer"],
                          options=d.get("options"), answer_prefix=d.get("answer_prefix"), meta=extra))
    return items


def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0, level: float = 0.95):
    """Mean and percentile-bootstrap CI over axis 0 (items), NaNs ignored."""
    values = np.asarray(values, dtype=float)
    mean = np.nanmean(values, axis=0)
    if len(values) < 2:
        return mean, mean.copy(), mean.copy()
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    boots = np.nanmean(values[idx], axis=1)
    alpha = (1 - level) / 2
    return mean, np.nanquantile(boots, alpha, axis=0), np.nanquantile(boots, 1 - alpha, axis=0)


@dataclass
class DatasetResult:
    records: list[dict[str, Any]]
    mode: str
    layers: list[int]
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def kept(self) -> list[dict]:
        return [r for r in self.records if r["status"] == "ok"]

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for r in self.records:
            out[r["status"]] = out.get(r["status"], 0) + 1
        return out

    def layer_curve(self):
        """Layers mode: (layers, mean RR, CI low, CI high) over kept items."""
        rows = [r["recovery"] for r in self.kept]
        if not rows:
            raise ValueError("no item was kept")
        return (self.layers, *bootstrap_ci(np.array(rows)))

    def group_curves(self) -> dict[str, tuple]:
        """Tokens mode: per group, (layers, mean RR, CI low, CI high) over kept items."""
        names = dict.fromkeys(g for r in self.kept for g in r["group_recovery"])
        return {g: (self.layers, *bootstrap_ci(np.array([r["group_recovery"][g] for r in self.kept
                                                          if g in r["group_recovery"]]))) for g in names}

    def summary(self) -> str:
        counts = self.counts()
        text = [f"{len(self.records)} items: " + ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))]
        if not self.kept:
            return text[0] + "; nothing to average"
        if self.mode == "layers":
            layers, mean, lo, hi = self.layer_curve()
            best = int(np.nanargmax(mean))
            half = next((l for l, m in zip(layers, mean) if m >= 0.5), None)
            text.append(f"mean RR peaks at layer {layers[best]} ({mean[best]:.2f}, 95% CI {lo[best]:.2f}-{hi[best]:.2f}); "
                        f"first layer with mean RR >= 0.5: {half}")
        else:
            for g, (layers, mean, lo, hi) in self.group_curves().items():
                best = int(np.nanargmax(mean))
                text.append(f"{g}: max mean RR {mean[best]:.2f} at layer {layers[best]} (95% CI {lo[best]:.2f}-{hi[best]:.2f})")
        return "\n".join(text)

    def plot(self, ax=None, title: Optional[str] = None):
        from lalm_lens.tracing import plots

        if self.mode == "layers":
            return plots.plot_layers({"mean RR": self.layer_curve()}, ax=ax, title=title)
        return plots.plot_groups(self.group_curves(), ax=ax, title=title)

    def save(self, path: Union[str, Path]) -> Path:
        path = Path(path)
        summary: dict[str, Any] = dict(mode=self.mode, layers=self.layers, counts=self.counts(), settings=self.settings)
        if self.kept:
            if self.mode == "layers":
                _, m, lo, hi = self.layer_curve()
                summary["mean_recovery"] = dict(mean=m.tolist(), ci_low=lo.tolist(), ci_high=hi.tolist())
            else:
                summary["group_recovery"] = {g: dict(mean=m.tolist(), ci_low=lo.tolist(), ci_high=hi.tolist())
                                             for g, (_, m, lo, hi) in self.group_curves().items()}
        path.write_text(json.dumps(summary, indent=1))
        return path


def _predictions(model, inputs, corr: Corruption, final: int) -> tuple[int, int]:
    """Top-1 token of the clean run and of the corrupted run (mean probabilities over noise samples)."""
    from lalm_lens.tracing.engines import noise_hooks, repeat_inputs

    with torch.no_grad():
        clean_top = int(model(inputs)[0, final].argmax())
        batch = repeat_inputs(corr.inputs, corr.n_runs)
        probs = model.run_with_hooks(batch, fwd_hooks=noise_hooks(corr.noise))[:, final].float().softmax(-1).mean(0)
    return clean_top, int(probs.argmax())


def trace_item(model, item: Item, *, mode: str, corruption: str, filter: Optional[str], trace_kwargs: dict) -> dict:
    record: dict[str, Any] = dict(id=item.id, audio=item.audio, answer=item.answer, **item.meta)
    inp = model.prepare(item.audio, item.question, answer_prefix=item.answer_prefix, options=item.options)
    answer_id, _ = answer_token(model, inp, item.answer)
    final = final_position(inp)
    corr_kwargs = {k: trace_kwargs[k] for k in ("noise_scale", "n_samples", "seed", "snr_db", "swap_audio") if k in trace_kwargs}
    corr = make_corruption(model, inp, None, corruption, **corr_kwargs)
    clean_top, corrupted_top = _predictions(model, inp, corr, final)
    record.update(clean_top=clean_top, corrupted_top=corrupted_top, answer_token=answer_id)
    if filter == "top1" and clean_top != answer_id:
        record["status"] = "dropped_clean_wrong"
        return record
    if filter == "top1" and corrupted_top == answer_id:
        record["status"] = "dropped_corrupted_right"
        return record
    result = causal_trace(model, inp, corr, answer=answer_id, mode=mode, corruption=corruption, **trace_kwargs)
    record.update(status="ok", p_clean=result.p_clean, p_corrupted=result.p_corrupted,
                  recovery=result.recovery.tolist(), positions=result.positions,
                  groups=[result.groups[p] for p in result.positions])
    if mode == "tokens":
        record["group_recovery"] = {g: v.tolist() for g, v in result.group_recovery().items()}
    return record


def trace_dataset(
    model,
    items: Union[str, Path, Iterable[Item], Iterable[dict]],
    *,
    out: Union[str, Path, None] = None,
    mode: str = "layers",
    corruption: str = "silence",
    filter: Optional[str] = "top1",
    progress: bool = True,
    limit: Optional[int] = None,
    **trace_kwargs: Any,
) -> DatasetResult:
    """Trace every item; `filter="top1"` applies the paper's drops (None keeps all)."""
    from tqdm.auto import tqdm

    if isinstance(items, (str, Path)):
        items = read_items(items)
    items = [i if isinstance(i, Item) else Item(**i) for i in items][:limit]
    done: dict[str, dict] = {}
    if out is not None:
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        if out.exists():
            for line in out.read_text().splitlines():
                if line.strip():
                    rec = json.loads(line)
                    done[rec["id"]] = rec
    records = []
    handle = out.open("a") if out is not None else None
    try:
        for item in tqdm(items, desc="tracing", disable=not progress):
            if item.id in done:
                records.append(done[item.id])
                continue
            try:
                record = trace_item(model, item, mode=mode, corruption=corruption, filter=filter, trace_kwargs=trace_kwargs)
            except Exception as err:  # recorded, and the run goes on
                record = dict(id=item.id, audio=item.audio, status="error", error=f"{type(err).__name__}: {err}")
            records.append(record)
            if handle is not None:
                handle.write(json.dumps(record) + "\n")
                handle.flush()
    finally:
        if handle is not None:
            handle.close()
    layers = list(trace_kwargs.get("layers") or range(model.cfg.n_layers))
    settings = dict(corruption=corruption, filter=filter, **{k: v for k, v in trace_kwargs.items() if k != "swap_audio"})
    return DatasetResult(records=records, mode=mode, layers=layers, settings=settings)
