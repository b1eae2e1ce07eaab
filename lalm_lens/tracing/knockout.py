"""Attention knockout: block attention from chosen queries to chosen keys over a window of layers.

Tests the paper's finding that the final token (and the option tokens) read the
audio through attention: the drop in P(answer) when the edges query -> key are
cut in layers `[l, l + window)`, for each start layer l.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Mapping, Optional, Sequence, Union

import torch
from torch import Tensor
from transformer_lens.utilities import get_act_name

from lalm_lens.pages import Viewable
from lalm_lens.tracing.cells import check_indices, check_window
from lalm_lens.tracing.groups import final_position
from lalm_lens.tracing.numbers import num
from lalm_lens.tracing.trace import answer_token, input_groups

Selector = Union[str, Sequence[str], Sequence[int]]


@dataclass
class KnockoutResult(Viewable):
    p_clean: float
    p_knocked: Tensor  # [n_windows]
    layers: list[int]  # first layer of each window
    window: int
    query_positions: list[int]
    key_positions: list[int]
    answer: str
    answer_token: int
    settings: dict = field(default_factory=dict)

    @property
    def drop(self) -> Tensor:
        """Relative drop (P_clean − P_knocked) / P_clean per window."""
        return (self.p_clean - self.p_knocked) / self.p_clean

    def to_dataframe(self):
        import pandas as pd

        return pd.DataFrame(dict(layer=self.layers, p_knocked=self.p_knocked.tolist(), drop=self.drop.tolist()))

    def describe_edges(self) -> str:
        name = lambda s: s if isinstance(s, str) else f"{len(s)} positions"  # noqa: E731
        return f"{name(self.settings.get('queries'))} -> {name(self.settings.get('keys'))}"

    def summary(self) -> str:
        """P(answer) with the edges cut, per window of layers, and where the drop is largest."""
        drop = self.drop.numpy()
        best = int(drop.argmax())
        lines = [f"answer {self.answer!r}: P(clean) = {self.p_clean:.4f}; attention {self.describe_edges()} cut in "
                 f"{self.window} layer(s) from each start layer; drop = (P_clean − P_knocked) / P_clean",
                 f"largest drop {num(drop[best])} from layer {self.layers[best]}"
                 + ("" if drop.max() - drop.min() >= 0.05 else " (flat: every window within 0.05)"),
                 "drop by start layer: " + ", ".join(f"{l}: {num(d)}" for l, d in zip(self.layers, drop))]
        return "\n".join(lines)

    def plot(self, ax=None, title: Optional[str] = None):
        from lalm_lens.tracing.plots import plot_layers

        return plot_layers({"knockout": (self.layers, self.drop.numpy())}, ax=ax, ylabel="relative drop in P(answer)",
                           xlabel="first layer of the window",
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


def knockout_hook(queries: Tensor, keys: Tensor):
    def hook(scores: Tensor, hook) -> Tensor:
        scores[:, :, queries[:, None], keys[None, :]] = torch.finfo(scores.dtype).min
        return scores

    return hook


@torch.no_grad()
def attention_knockout(
    model,
    inp: Mapping,
    *,
    answer: Union[int, str],
    queries: Selector = "final",
    keys: Selector = "audio",
    window: int = 1,
    layers: Optional[Sequence[int]] = None,
) -> KnockoutResult:
    """P(answer) with attention query -> key cut in every layer of `[l, l + window)`."""
    n_layers = model.cfg.n_layers
    window = check_window(window)
    starts = check_indices(layers, n_layers, "layer(s)", range(n_layers))
    answer_id, label = answer_token(model, inp, answer)
    groups = input_groups(model, inp)
    final = final_position(inp)
    q = torch.tensor(select_positions(queries, groups, final), device=model.device)
    k = torch.tensor(select_positions(keys, groups, final), device=model.device)
    prob = lambda logits: logits[0, final].float().softmax(-1)[answer_id].item()  # noqa: E731
    p_clean = prob(model(inp))
    knocked = []
    for start in starts:
        hooks = [(get_act_name("attn_scores", l), knockout_hook(q, k)) for l in range(start, min(n_layers, start + window))]
        knocked.append(prob(model.run_with_hooks(inp, fwd_hooks=hooks)))
    return KnockoutResult(
        p_clean=p_clean, p_knocked=torch.tensor(knocked, dtype=torch.float64), layers=starts, window=window,
        query_positions=q.tolist(), key_positions=k.tolist(), answer=label, answer_token=answer_id,
        settings=dict(queries=queries if isinstance(queries, str) else list(queries),
                      keys=keys if isinstance(keys, str) else list(keys)),
    )
