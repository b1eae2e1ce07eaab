"""Whether a trace means anything: the checks every trace (and every dataset item) runs.

- `clean_top1`: the clean run's top-1 token is the answer (else the model is not
  answering what is being traced);
- `corrupted_top1`: the corrupted run's top-1 is not the answer (else the
  corruption did not remove the information; the paper drops such items);
- `effect`: m_clean − m_corrupted ≥ `min_effect` (RR divides by this: with a
  denominator near zero a tiny change reads as a large recovery). The default
  is the metric's: 0.1 for probabilities, 1.0 for a logit difference, 0 (a
  positive effect) for a custom metric.

A failed check makes the trace ill-posed: flagged in `summary()`, the saved
JSON, figure titles and the CLI's exit status; the numbers stay computable.
"""

from __future__ import annotations

import warnings
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Optional

import torch
from jaxtyping import Float
from torch import Tensor

if TYPE_CHECKING:
    from lalm_lens.interface import LALM


class IllPosedTraceWarning(UserWarning):
    """A trace whose recovery rate does not mean what it says."""


@dataclass(frozen=True)
class Check:
    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class Checks:
    items: tuple[Check, ...] = ()

    @property
    def ok(self) -> bool:
        return all(c.passed for c in self.items)

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.items if not c.passed]

    def describe(self) -> str:
        """"" when all passed, else "ill-posed: <details>"."""
        return "" if self.ok else "ill-posed: " + "; ".join(c.detail for c in self.failed)

    def to_json(self) -> list[dict]:
        return [asdict(c) for c in self.items]

    @classmethod
    def from_json(cls, items: list[dict]) -> "Checks":
        return cls(tuple(Check(**c) for c in items))


def run_checks(model: "LALM", clean_logits: Float[Tensor, "d_vocab"],
               corrupted_logits: Float[Tensor, "n_runs d_vocab"], answer: int, clean_score: float,
               corrupted_score: float, min_effect: float) -> Checks:
    """The checks of one trace from its final-position logits (`[d_vocab]`, `[n_runs, d_vocab]`)."""
    name = _token_name(model, answer)
    clean_probs = clean_logits.float().softmax(-1)
    top = int(clean_probs.argmax())
    corr_probs = corrupted_logits.float().softmax(-1).mean(0)
    corr_top = int(corr_probs.argmax())
    effect = clean_score - corrupted_score
    return Checks((
        Check("clean_top1", top == answer,
              f"the clean run predicts {_token_name(model, top)} (P {clean_probs[top]:.3f}), not the answer {name} "
              f"(P {clean_probs[answer]:.3f})" if top != answer else f"the clean run predicts the answer {name}"),
        Check("corrupted_top1", corr_top != answer,
              f"the corrupted run still predicts the answer {name} (P {corr_probs[answer]:.3f})" if corr_top == answer
              else f"the corrupted run predicts {_token_name(model, corr_top)}"),
        Check("effect", effect >= min_effect and effect > 0,
              f"m(clean) − m(corrupted) = {effect:.4g} is below min_effect {min_effect:g}, so recovery rates are "
              "ratios of noise" if not (effect >= min_effect and effect > 0)
              else f"m(clean) − m(corrupted) = {effect:.4g} >= {min_effect:g}"),
    ))


def no_audio(corruption: str) -> str:
    """The message for an audio corruption given an input prepared without audio (nothing to trace)."""
    return (f"this input has no audio to corrupt ({corruption} replaces or perturbs the audio): prepare it with "
            "audio (model.prepare(audio, prompt)) to trace how the audio reaches the answer")


def warn_if_ill_posed(checks: Checks, what: str = "this trace") -> None:
    if not checks.ok:
        warnings.warn(f"{what} is {checks.describe()}", IllPosedTraceWarning, stacklevel=3)


def _token_name(model: "LALM", token: int) -> str:
    tok = getattr(model, "tokenizer", None)
    if tok is None:
        return f"token {token}"
    return f"{tok.convert_ids_to_tokens([int(token)])[0]!r}"


def resolve_min_effect(min_effect: Optional[float], metric) -> float:
    value = metric.min_effect if min_effect is None else min_effect
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not torch.isfinite(torch.tensor(float(value))):
        raise ValueError(f"min_effect must be a finite number, got {min_effect!r}")
    return float(value)
