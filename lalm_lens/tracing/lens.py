"""What each layer already knows: a logit lens at the final position and over the audio positions.

The residual stream after each block is read out as the model reads its last
one (`ln_final`, then the unembedding: `model.readout`). At the final position:
the metric (P(answer) by default) and the top tokens per layer, clean vs
corrupted. Over the audio positions (AudioLens-style): per audio token and
layer, the rank of the answer among all tokens (0 = top-1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Optional

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor
from transformer_lens.utilities import get_act_name

from lalm_lens.result import Result
from lalm_lens.tracing.numbers import num, to_float, to_floats

if TYPE_CHECKING:
    from lalm_lens.inputs.prepared import PreparedInput
    from lalm_lens.interface import LALM


@dataclass
class LensResult(Result):
    layers: list[int]  # after each of these blocks
    answer: str
    answer_token: int
    metric: dict
    clean: list[float]  # the metric at the final position, per layer
    corrupted: Optional[list[float]]  # the same on the corrupted run (mean over noise samples), or None
    clean_top: list[list]  # per layer, the top tokens [[token, probability], ...]
    corrupted_top: Optional[list[list]]
    audio_positions: list[int]
    audio_seconds: Optional[list[float]]
    audio_rank: list[list[int]]  # [layer][audio position]: the answer's rank there (0 = top-1)
    settings: dict = field(default_factory=dict)
    kind: ClassVar[str] = "logit_lens"
    what: ClassVar[str] = "logit lens"

    def first_top1(self) -> Optional[int]:
        """The first layer after which the answer is the final position's top-1 token (clean)."""
        return next((l for l, top in zip(self.layers, self.clean_top) if top and top[0][2] == self.answer_token), None)

    def summary(self) -> str:
        m = self.metric.get("describe", self.metric.get("name"))
        lines = [f"logit lens, answer {self.answer!r} (token {self.answer_token}); {m} at the final position after each "
                 "layer (ln_final, then the unembedding, as the model reads its last layer)",
                 "clean: " + ", ".join(f"{l}: {num(v, '.3f')}" for l, v in zip(self.layers, self.clean))]
        if self.corrupted is not None:
            lines.append("corrupted: " + ", ".join(f"{l}: {num(v, '.3f')}" for l, v in zip(self.layers, self.corrupted)))
        first = self.first_top1()
        lines.append(f"the answer is the top-1 token from layer {first}" if first is not None else
                     "the answer is never the top-1 token at the final position")
        lines.append("top tokens (clean), last layer: " + ", ".join(f"{t!r} {num(p)}" for t, p, _ in self.clean_top[-1]))
        if self.audio_positions:
            rank = np.asarray(self.audio_rank)
            l, j = np.unravel_index(int(rank.argmin()), rank.shape)
            when = f" ({num(self.audio_seconds[j])} s)" if self.audio_seconds else ""
            lines.append(f"over the {len(self.audio_positions)} audio positions: the answer's best rank is "
                         f"{int(rank[l, j])} at position {self.audio_positions[j]}{when}, layer {self.layers[l]}; "
                         f"median rank by layer: " + ", ".join(f"{x}: {int(v)}" for x, v in
                                                                zip(self.layers, np.median(rank, 1))))
        return "\n".join(lines)

    @classmethod
    def _from_json(cls, d: dict[str, Any], source: str) -> "LensResult":
        d["clean"] = to_floats(d["clean"])
        if d.get("corrupted") is not None:
            d["corrupted"] = to_floats(d["corrupted"])
        for key in ("clean_top", "corrupted_top"):
            if d.get(key) is not None:
                d[key] = [[[t, to_float(p), i] for t, p, i in row] for row in d[key]]
        result = super()._from_json(d, source)
        if len(result.clean) != len(result.layers) or len(result.audio_rank) != len(result.layers):
            raise ValueError(f"{source}: per-layer arrays do not match the {len(result.layers)} layers")
        return result

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame(dict(layer=self.layers, clean=self.clean,
                                 corrupted=self.corrupted or [math.nan] * len(self.layers),
                                 top_clean=[t[0][0] if t else None for t in self.clean_top]))

    def plot(self, title: Optional[str] = None):
        from lalm_lens.tracing.plots import plot_lens

        return plot_lens(self, title=title)


def _top(probs: Float[Tensor, " vocab"], k: int, tokenizer) -> list:
    values, ids = probs.topk(k)
    names = tokenizer.convert_ids_to_tokens(ids.tolist()) if tokenizer is not None else [str(i) for i in ids.tolist()]
    return [[n, float(v), int(i)] for n, v, i in zip(names, values.tolist(), ids.tolist())]


@torch.no_grad()
def logit_lens(model: "LALM", inp: "PreparedInput", corruption="silence", *, answer, metric=None, top_k: int = 5,
               chunk: int = 256) -> LensResult:
    """The lens of one item (`corruption=None`: the clean run only)."""
    from lalm_lens.tracing.groups import final_position
    from lalm_lens.tracing.interventions import as_corruption
    from lalm_lens.tracing.metrics import as_metric
    from lalm_lens.tracing.pipeline import answer_token

    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise ValueError(f"top_k must be an integer >= 1, got {top_k!r}")
    metric = as_metric(metric)
    corruption = None if corruption is None else as_corruption(corruption)
    token, label = answer_token(model, inp, answer)
    score = metric.bind(model, inp, token)
    L, final = model.cfg.n_layers, final_position(inp)
    names = [get_act_name("resid_post", l) for l in range(L)]
    _, cache = model.run_with_cache(inp, names_filter=lambda n: n in names)
    audio = inp.audio_positions[0].tolist() if hasattr(inp, "audio_positions") else []

    def final_lens(acts) -> tuple[list[float], list[list]]:
        values, tops = [], []
        for name in names:
            logits = model.readout(acts[name][:, final : final + 1])[:, 0]  # [rows, vocab]
            values.append(float(score(logits).double().mean()))
            tops.append(_top(logits.float().softmax(-1).mean(0), top_k, model.tokenizer))
        return values, tops

    clean, clean_top = final_lens(cache)
    ranks = []
    for name in names:
        row = []
        for start in range(0, len(audio), chunk):
            logits = model.readout(cache[name][0, audio[start : start + chunk]])
            row += (logits > logits[:, token : token + 1]).sum(-1).tolist()
        ranks.append(row)
    corrupted = corrupted_top = None
    if corruption is not None:
        run = corruption.apply(model, inp)
        with model.hooks(fwd_hooks=run.hooks()):
            _, corr_cache = model.run_with_cache(run.batch(), names_filter=lambda n: n in names)
        corrupted, corrupted_top = final_lens(corr_cache)
    seconds = (getattr(inp, "meta", None) or {}).get("audio_seconds")
    return LensResult(
        layers=list(range(L)), answer=label, answer_token=token,
        metric=dict(metric.to_dict(), describe=metric.describe()), clean=clean, corrupted=corrupted,
        clean_top=clean_top, corrupted_top=corrupted_top, audio_positions=audio,
        audio_seconds=None if not seconds or seconds[0] is None else seconds[0].tolist(), audio_rank=ranks,
        settings=dict(model=model.name_or_path, top_k=top_k,
                      corruption=None if corruption is None else corruption.to_dict()),
    )
