"""Attention knockout: block attention from chosen queries to chosen keys over a window of layers.

Tests the paper's finding that the final token (and the option tokens) read the
audio through attention: the metric (P(answer) by default) with the edges
query -> key cut in the window of layers around each layer l, and its relative
drop from the clean run. `window` means what it means in tracing: ROME's window
centred on l, layers `[l - window//2, l + ceil(window/2))` clipped at the ends
(`cells.window_layers`); `window=1` is layer l alone.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Optional, Sequence, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.utilities import get_act_name

from lalm_lens.result import Result
from lalm_lens.tracing.cells import check_indices, check_window, window_layers
from lalm_lens.tracing.groups import final_position
from lalm_lens.tracing.numbers import num, to_float, to_floats
from lalm_lens.tracing.results import probability
from lalm_lens.tracing.pipeline import answer_token, input_groups

if TYPE_CHECKING:
    from lalm_lens.interface import LALM

Selector = Union[str, Sequence[str], Sequence[int]]


@dataclass(init=False)
class KnockoutResult(Result):
    """`knocked[i]`: the metric with attention `query_positions -> key_positions` cut in the window of layers
    centred on `layers[i]` (`windows[i]`); `clean`: the metric of the uncut run."""

    clean: float
    knocked: Float[Tensor, " layer"]
    layers: list[int]  # the centre of each window
    window: int
    query_positions: list[int]
    key_positions: list[int]
    answer: str
    answer_token: int
    metric: dict[str, Any] = field(default_factory=lambda: {"name": "answer_prob", "probability": True})
    settings: dict[str, Any] = field(default_factory=dict)
    kind: ClassVar[str] = "knockout"
    what: ClassVar[str] = "knockout"

    def __init__(self, clean: Optional[float] = None, knocked: Optional[Tensor] = None, layers: Sequence[int] = (),
                 window: int = 1, query_positions: Sequence[int] = (), key_positions: Sequence[int] = (),
                 answer: str = "", answer_token: int = -1, metric: Optional[dict] = None,
                 settings: Optional[dict] = None, *, p_clean: Optional[float] = None,
                 p_knocked: Optional[Tensor] = None):
        """`p_clean` / `p_knocked` name `clean` / `knocked` when the metric is P(answer) (the default)."""
        clean = p_clean if clean is None else clean
        knocked = p_knocked if knocked is None else knocked
        if clean is None or knocked is None:
            raise TypeError("KnockoutResult needs clean and knocked (or p_clean and p_knocked)")
        self.clean, self.knocked = float(clean), torch.as_tensor(knocked, dtype=torch.float64)
        self.layers, self.window = list(layers), int(window)
        self.query_positions, self.key_positions = list(query_positions), list(key_positions)
        self.answer, self.answer_token = answer, int(answer_token)
        self.metric = {"name": "answer_prob", "probability": True} if metric is None else metric
        self.settings = {} if settings is None else settings

    # ------------------------------------------------------------ the metric, by its P(answer) name
    @property
    def p_clean(self) -> float:
        return probability(self.metric, self.clean, "knockout", ".clean / .knocked")

    @property
    def p_knocked(self) -> Float[Tensor, " layer"]:
        return probability(self.metric, self.knocked, "knockout", ".clean / .knocked")

    @property
    def windows(self) -> list[tuple[int, ...]]:
        """The layers cut around each of `layers` (ROME's centred window, clipped at the model's ends)."""
        n_layers = self.settings.get("n_layers", max(self.layers, default=-1) + self.window)
        return [window_layers(l, self.window, n_layers) for l in self.layers]

    @property
    def drop(self) -> Float[Tensor, " layer"]:
        """Relative drop (m_clean − m_knocked) / m_clean per window."""
        return (self.clean - self.knocked) / self.clean

    @classmethod
    def _from_json(cls, d: dict[str, Any], source: str) -> "KnockoutResult":
        try:
            d["clean"], d["knocked"] = to_float(d["clean"]), to_floats(d["knocked"])
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"{source}: the scores are missing or not numbers ({err})") from None
        result = super()._from_json(d, source)
        if len(result.knocked) != len(result.layers):
            raise ValueError(f"{source}: {len(result.knocked)} knocked scores for {len(result.layers)} layers")
        return result

    def to_dataframe(self):
        import pandas as pd

        spans = self.windows
        return pd.DataFrame(dict(layer=self.layers, first=[w[0] for w in spans], last=[w[-1] for w in spans],
                                 knocked=self.knocked.tolist(), drop=self.drop.tolist()))

    def describe_edges(self) -> str:
        name = lambda s: s if isinstance(s, str) else f"{len(s)} positions"  # noqa: E731
        return f"{name(self.settings.get('queries'))} -> {name(self.settings.get('keys'))}"

    def cut_in(self) -> str:
        """Which layers each point cuts, in words."""
        return "its layer" if self.window == 1 else f"a window of {self.window} layers centred on it"

    def summary(self) -> str:
        """The metric with the edges cut, per window of layers, and where the drop is largest."""
        m = "P" if self.metric.get("name") == "answer_prob" else "m"
        what = self.metric.get("describe", self.metric.get("name"))
        drop = self.drop.numpy()
        best = int(drop.argmax())
        lines = [f"answer {self.answer!r}: metric m = {what}; {m}(clean) = {self.clean:.4f}; attention "
                 f"{self.describe_edges()} cut in {self.cut_in()} at each layer; "
                 f"drop = ({m}_clean − {m}_knocked) / {m}_clean",
                 f"largest drop {num(drop[best])} at layer {self.layers[best]}"
                 + ("" if drop.max() - drop.min() >= 0.05 else " (flat: every window within 0.05)"),
                 "drop by layer: " + ", ".join(f"{l}: {num(d)}" for l, d in zip(self.layers, drop))]
        return "\n".join(lines)

    def plot(self, ax=None, title: Optional[str] = None):
        from lalm_lens.tracing.plots import plot_layers

        xlabel = "layer" if self.window == 1 else f"centre layer of the window ({self.window} layers)"
        return plot_layers({"knockout": (self.layers, self.drop.numpy())}, ax=ax, xlabel=xlabel,
                           ylabel=f"relative drop in {self.metric.get('describe', self.metric.get('name'))}",
                           title=title or f"answer {self.answer!r} · attention {self.describe_edges()} cut "
                                          f"(window {self.window})")


def select_positions(selector: Selector, groups: list[str], final: int) -> list[int]:
    """`"final"`, a group name, several group names, or explicit positions."""
    if isinstance(selector, str):
        selector = [selector]
    selector = list(selector)
    if all(isinstance(s, int) for s in selector):
        return [int(s) for s in selector]
    out = []
    for name in selector:
        found = [final] if name == "final" else [i for i, g in enumerate(groups) if g == name]
        if not found:
            raise ValueError(f"no positions in group {name!r} (groups present: {sorted(set(groups))})")
        out += found
    return sorted(set(out))


def knockout_hook(queries: Int[Tensor, " query"], keys: Int[Tensor, " key"]):
    def hook(scores: Float[Tensor, "batch head q_pos k_pos"], hook) -> Float[Tensor, "batch head q_pos k_pos"]:
        scores[:, :, queries[:, None], keys[None, :]] = torch.finfo(scores.dtype).min
        return scores

    return hook


@torch.no_grad()
def attention_knockout(
    model: "LALM",
    inp: Mapping,
    *,
    answer: Union[int, str],
    queries: Selector = "final",
    keys: Selector = "audio",
    window: int = 1,
    layers: Optional[Sequence[int]] = None,
    metric=None,
) -> KnockoutResult:
    """The metric (P(answer) by default) with attention query -> key cut in the window of `window` layers centred
    on each layer (ROME's window, as in `causal_trace`)."""
    from lalm_lens.tracing.metrics import as_metric

    n_layers = model.cfg.n_layers
    window = check_window(window)
    centres = check_indices(layers, n_layers, "layer(s)", range(n_layers))
    metric = as_metric(metric)
    answer_id, label = answer_token(model, inp, answer)
    groups = input_groups(model, inp)
    final = final_position(inp)
    score = metric.bind(model, inp, answer_id)
    q = torch.tensor(select_positions(queries, groups, final), device=model.device)
    k = torch.tensor(select_positions(keys, groups, final), device=model.device)
    measure = lambda logits: float(score(logits[:, final]).double().mean())  # noqa: E731
    clean = measure(model(inp))
    knocked = []
    for centre in centres:
        hooks = [(get_act_name("attn_scores", l), knockout_hook(q, k)) for l in window_layers(centre, window, n_layers)]
        knocked.append(measure(model.run_with_hooks(inp, fwd_hooks=hooks)))
    return KnockoutResult(
        clean=clean, knocked=torch.tensor(knocked, dtype=torch.float64), layers=centres, window=window,
        query_positions=q.tolist(), key_positions=k.tolist(), answer=label, answer_token=answer_id,
        metric=dict(metric.to_dict(), describe=metric.describe(), probability=metric.probability),
        settings=dict(queries=queries if isinstance(queries, str) else list(queries),
                      keys=keys if isinstance(keys, str) else list(keys), n_layers=n_layers),
    )
