"""Metrics as values: what a trace scores at the final position.

    answer_prob                     P(answer), softmax over the whole vocabulary (the paper's; the default)
    logit_diff(answer, foil)        logit(answer) − logit(foil) (mean of the foils' logits if several;
                                    by default the item's other options)
    option_prob(options)            P(answer) renormalised over the option tokens (by default the item's options)
    any callable                    `fn(logits) -> scores`, logits `[rows, d_vocab]` at the final position
                                    (TransformerLens's convention), one score per row

Recovery is computed from the metric: RR = (m_patched − m_corrupted) / (m_clean − m_corrupted).
With several noise samples the metric is averaged over them. Strings name the
built-ins ("answer_prob", "logit_diff", "option_prob").
"""

from __future__ import annotations

import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, Optional, Sequence, Union

import torch
from jaxtyping import Float
from torch import Tensor

if TYPE_CHECKING:
    from lalm_lens.interface import LALM

Score = Callable[[Float[Tensor, "rows d_vocab"]], Float[Tensor, "rows"]]  # final-position logits -> one score per row


def token_id(model: "LALM", inp, token: Union[str, int], what: str = "answer") -> int:
    """A token id from an id or a one-token string, tokenised as it continues `inp`: with a leading
    space unless the input ends in whitespace (BPE tokenisers mark the space in the token)."""
    if isinstance(token, bool) or isinstance(token, float):
        raise TypeError(f"the {what} must be a token id (int) or a one-token string, not {type(token).__name__} {token!r}")
    if isinstance(token, Tensor):
        if token.numel() != 1 or token.is_floating_point() or token.dtype == torch.bool:
            raise TypeError(f"the {what} tensor must hold one integer token id, got {token!r}")
        token = int(token)
    if not isinstance(token, str):
        try:
            index = int(token.__index__())  # int, numpy integers
        except (AttributeError, TypeError):
            raise TypeError(f"the {what} must be a token id or a string, not {type(token).__name__}") from None
        if not 0 <= index < model.cfg.d_vocab:
            raise ValueError(f"{what} token {index} is outside the vocabulary (0..{model.cfg.d_vocab - 1})")
        return index
    tok = model.require_tokenizer()
    text = getattr(inp, "texts", [""])[0]
    spaced = token if (not text or text[-1].isspace() or token[:1].isspace()) else " " + token
    ids = tok.encode(spaced, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(
            f"the {what} {token!r} is {len(ids)} tokens {tok.convert_ids_to_tokens(ids)}, not one; "
            "pass a one-token answer or a token id"
        )
    unk = getattr(tok, "unk_token_id", None)
    if unk is not None and ids[0] == unk:
        raise ValueError(f"the {what} {token!r} is not in the vocabulary (it tokenises to the unknown token "
                         f"{tok.convert_ids_to_tokens([unk])[0]!r}); check its spelling and case")
    return ids[0]


class Metric(ABC):
    """A score of the final-position logits; `bind` resolves its tokens for one item."""

    name: str = "metric"
    probability = False  # whether scores are probabilities (then `result.p_clean` etc. exist)
    min_effect = 0.0  # default threshold of the ill-posed check on m_clean − m_corrupted

    @abstractmethod
    def bind(self, model: "LALM", inp, answer: int) -> Score:
        """The score function for this item (tokens resolved)."""

    def describe(self) -> str:
        return self.name

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name}


@dataclass(frozen=True)
class AnswerProb(Metric):
    """P(answer) at the final position, softmax over the whole vocabulary in float32."""

    name = "answer_prob"
    probability = True
    min_effect = 0.1

    def bind(self, model: "LALM", inp, answer: int) -> Score:
        return lambda logits: logits.float().softmax(-1)[:, answer]

    def describe(self) -> str:
        return "P(answer)"


def _item_options(inp, what: str) -> list:
    options = (getattr(inp, "meta", None) or {}).get("options")
    if not options:
        raise ValueError(f"{what} needs options: pass them to the metric, or prepare the item with options=[...]")
    return list(options)


@dataclass(frozen=True)
class LogitDiff(Metric):
    """logit(answer) − mean logit(foils); `answer=None` is the trace's answer, `foil=None` the item's other options."""

    answer: Optional[Union[str, int]] = None
    foil: Optional[Union[str, int, Sequence]] = None
    name = "logit_diff"
    min_effect = 1.0

    def __post_init__(self):
        foils = [self.foil] if isinstance(self.foil, (str, int)) else list(self.foil or [])
        if self.answer is not None and foils and all(f == self.answer for f in foils):
            raise ValueError(f"logit_diff(foil={self.foil!r}): the foil is the answer, so logit(answer) − "
                             "logit(foil) is 0 in every run; pass a foil other than the answer")

    def bind(self, model: "LALM", inp, answer: int) -> Score:
        target = answer if self.answer is None else token_id(model, inp, self.answer)
        if self.foil is None:
            foils = [t for t in (token_id(model, inp, o, "option") for o in _item_options(inp, "logit_diff()")) if t != target]
            if not foils:
                raise ValueError("logit_diff needs at least one foil token other than the answer; the item's options "
                                 "are all the answer's token: pass logit_diff(foil=...)")
        else:
            given = [self.foil] if isinstance(self.foil, (str, int)) else list(self.foil)
            ids = [token_id(model, inp, f, "foil") for f in given]
            foils = list(dict.fromkeys(t for t in ids if t != target))
            same = [f for f, t in zip(given, ids) if t == target]
            if not foils:
                raise ValueError(f"logit_diff(foil={self.foil!r}): the foil is the answer (token {target}), so "
                                 "logit(answer) − logit(foil) is 0 in every run; pass a foil other than the answer")
            if same:
                warnings.warn(f"logit_diff(foil={self.foil!r}): the foils include the answer ({same[0]!r}, token "
                              f"{target}); it is dropped from the foils (averaging it in would shrink the metric)",
                              stacklevel=2)
            if len(foils) < len(ids) - len(same):
                raise ValueError(f"logit_diff(foil={self.foil!r}): two foils are the same token; each foil must be "
                                 "a distinct token")
        idx = torch.tensor(foils)
        return lambda logits: logits[:, target].float() - logits[:, idx.to(logits.device)].float().mean(-1)

    def describe(self) -> str:
        return "logit(answer) − logit(foil)"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "answer": self.answer, "foil": self.foil}


@dataclass(frozen=True)
class OptionProb(Metric):
    """P(answer) renormalised over the option tokens (softmax over their logits)."""

    options: Optional[Sequence[Union[str, int]]] = None
    name = "option_prob"
    probability = True
    min_effect = 0.1

    def __post_init__(self):
        if self.options is not None and len(set(map(str, self.options))) < len(self.options):
            raise ValueError(f"option_prob(options={list(self.options)}): an option is listed twice; each option "
                             "must be a distinct token")

    def bind(self, model: "LALM", inp, answer: int) -> Score:
        options = list(self.options) if self.options is not None else _item_options(inp, "option_prob()")
        ids = [token_id(model, inp, o, "option") for o in options]
        twice = [(a, b) for i, (a, x) in enumerate(zip(options, ids)) for b, y in zip(options[i + 1:], ids[i + 1:])
                 if x == y]
        if twice:
            a, b = twice[0]
            raise ValueError(f"option_prob: the options {a!r} and {b!r} are the same token ({ids[options.index(a)]}); "
                             f"each option must be a distinct token (options {options})")
        if answer not in ids:
            raise ValueError(f"the answer (token {answer}) is not one of the options {options}")
        at, idx = ids.index(answer), torch.tensor(ids)
        return lambda logits: logits[:, idx.to(logits.device)].float().softmax(-1)[:, at]

    def describe(self) -> str:
        return "P(answer | options)"

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "options": None if self.options is None else list(self.options)}


@dataclass(frozen=True)
class CustomMetric(Metric):
    """Any callable on the final-position logits `[rows, d_vocab]`, returning one score per row."""

    fn: Callable[[Tensor], Tensor]
    min_effect = 0.0

    @property
    def name(self) -> str:  # type: ignore[override]
        return getattr(self.fn, "__name__", "custom")

    def bind(self, model: "LALM", inp, answer: int) -> Score:
        def score(logits: Tensor) -> Tensor:
            out = torch.as_tensor(self.fn(logits))
            if out.ndim == 0 and logits.shape[0] == 1:
                return out.reshape(1)
            if out.ndim == 0:  # a scalar for the whole batch: score the rows one by one
                return torch.stack([torch.as_tensor(self.fn(logits[r : r + 1])).reshape(()) for r in range(logits.shape[0])])
            if out.shape != (logits.shape[0],):
                raise ValueError(f"the metric {self.name} returned shape {tuple(out.shape)}; expected one score per row "
                                 f"({logits.shape[0]},)")
            return out

        return score


answer_prob = AnswerProb()


def logit_diff(answer: Optional[Union[str, int]] = None, foil=None) -> LogitDiff:
    return LogitDiff(answer, foil)


def option_prob(options: Optional[Sequence[Union[str, int]]] = None) -> OptionProb:
    return OptionProb(options)


NAMED = {"answer_prob": AnswerProb, "logit_diff": LogitDiff, "option_prob": OptionProb}


def as_metric(metric: Union[str, Metric, Callable, None]) -> Metric:
    """A `Metric` from a value, a built-in's name, or a callable."""
    if metric is None:
        return answer_prob
    if isinstance(metric, Metric):
        return metric
    if isinstance(metric, str):
        if metric not in NAMED:
            raise ValueError(f"unknown metric {metric!r}; choose from {sorted(NAMED)} or pass a callable")
        return NAMED[metric]()
    if callable(metric):
        return CustomMetric(metric)
    raise TypeError(f"metric must be a Metric, a name or a callable, not {type(metric).__name__}")


def metric_from_dict(d: dict) -> Metric:
    """Rebuild a built-in metric from `to_dict()` (custom callables cannot be rebuilt)."""
    d = dict(d)
    name = d.pop("name")
    if name not in NAMED:
        raise ValueError(f"metric {name!r} is not a built-in; it cannot be rebuilt from its settings")
    return NAMED[name](**d)
