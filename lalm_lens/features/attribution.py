"""Feature attribution: which SAE features carry the audio's effect, from one forward and one backward.

For a spliced SAE's feature hook, the first-order estimate of restoring feature f at position p is

    attribution[p, f] = (a_clean[p, f] − a_corrupted[p, f]) · ∂m/∂a[p, f]

with the gradient of the metric m taken on the corrupted run (summed over noise samples of the mean, so each
weighs 1/n), exact where m is linear in the activations (a feature hook after the last nonlinearity).
`per_feature` sums it over positions; `top(n)` ranks the features. Compare with the exact feature cells
(`causal_trace(..., states=hook, features=...)`) before trusting a ranking.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from jaxtyping import Float
from torch import Tensor

from lalm_lens.features.cells import feature_splice
from lalm_lens.tracing.checks import Checks, warn_if_ill_posed
from lalm_lens.tracing.engines import AttributionEngine
from lalm_lens.tracing.engines.base import Baseline, lora_for, score_of
from lalm_lens.tracing.numbers import json_floats, num


@dataclass
class FeatureAttribution:
    """`scores[i, f]`: gradient × (clean − corrupted) activation of feature f at `positions[i]`."""

    hook: str
    scores: Float[Tensor, "position d_sae"]
    positions: list[int]
    token_labels: list[str]
    clean: float  # the metric of the clean run
    corrupted: float  # of the corrupted run (mean over noise samples)
    answer: str
    answer_token: int
    metric: dict[str, Any] = field(default_factory=dict)
    checks: Checks = field(default_factory=Checks)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def per_feature(self) -> Float[Tensor, "d_sae"]:
        """The estimate of restoring each feature at every traced position at once."""
        return self.scores.sum(0)

    @property
    def per_position(self) -> Float[Tensor, "position"]:
        """The estimate of restoring every feature at each position."""
        return self.scores.sum(1)

    def top(self, n: int = 10, by_magnitude: bool = False) -> list[dict[str, Any]]:
        """The `n` features with the largest estimated effect (signed: those that restore the metric most;
        `by_magnitude`: largest |effect|), each with its total, its best position and that cell's share."""
        total = self.per_feature
        order = (total.abs() if by_magnitude else total).argsort(descending=True)[:n].tolist()
        out = []
        for f in order:
            col = self.scores[:, f]
            i = int((col.abs() if by_magnitude else col).argmax())
            out.append(dict(feature=f, attribution=float(total[f]), position=self.positions[i],
                            token=self.token_labels[i], at_position=float(col[i])))
        return out

    def summary(self, n: int = 5) -> str:
        lines = [f"feature attribution at {self.hook}: answer {self.answer!r}, m(clean) = {num(self.clean, '.4f')}, "
                 f"m(corrupted) = {num(self.corrupted, '.4f')}; estimated effect of restoring every feature "
                 f"{num(float(self.scores.sum()), '.4f')}"]
        if not self.checks.ok:
            lines.append("WARNING " + self.checks.describe())
        lines += [f"  feature {t['feature']}: {num(t['attribution'], '+.4f')} (most at {t['position']}: {t['token']!s})"
                  for t in self.top(n)]
        return "\n".join(lines)

    def to_json(self) -> dict[str, Any]:
        return dict(kind="feature_attribution", hook=self.hook, scores=self.scores.tolist(), positions=self.positions,
                    token_labels=self.token_labels, clean=self.clean, corrupted=self.corrupted, answer=self.answer,
                    answer_token=self.answer_token, metric=self.metric, checks=self.checks.to_json(),
                    settings=self.settings, top=self.top(20))

    def save(self, path) -> Path:
        path = Path(path)
        if path.suffix != ".json":
            raise ValueError(f"save a feature attribution as .json, not {path.suffix or 'a file without extension'!r}")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(json_floats(self.to_json()), indent=1, allow_nan=False))
        return path


def _as_rows(act: Tensor, like: Tensor) -> Tensor:
    """`[runs, pos, d_sae]` view of an activation (a `[pos, d_sae]` hook stacks runs along its first axis)."""
    return act.view(-1, *like.shape[-2:]) if act.dim() == 2 else act


def feature_attribution(model, clean, corruption="silence", *, answer, states: str, metric=None,
                        positions: Optional[Sequence[int]] = None, min_effect: Optional[float] = None,
                        lora: Optional[str] = None) -> FeatureAttribution:
    """Gradient × (clean − corrupted) feature activation at `states` (a spliced SAE's feature hook), per
    position and feature. `positions` default to every position of the hook's axis; the other arguments
    are `causal_trace`'s."""
    from lalm_lens.tracing.cells import check_indices
    from lalm_lens.tracing.checks import run_checks
    from lalm_lens.tracing.pipeline import Layout, PreparedTrace, TraceSpec, prepare_job, trace_settings

    feature_splice(model, states)
    spec = TraceSpec(model, metric=metric, engine="attribution", min_effect=min_effect, lora=lora,
                     corruption=corruption)
    spec.states, spec.layers = states, []
    job, item, _ = prepare_job(model, spec, clean, answer, layout=lambda groups: Layout([]))
    with torch.no_grad(), lora_for(model, job, "clean"):
        logits, cache = model.run_with_cache(job.clean, names_filter=lambda n: n == states)
    clean_acts = cache[states]
    kept = {}

    def leaf(act: Tensor, hook) -> Tensor:
        kept["acts"] = act.detach().requires_grad_()
        return kept["acts"]

    with torch.enable_grad(), lora_for(model, job, "corrupted"):
        corr_logits = model.run_with_hooks(job.corrupted.batch(), fwd_hooks=job.corrupted.hooks() + [(states, leaf)])
        final = corr_logits[:, job.final]
        (grad,) = torch.autograd.grad(job.score(final).mean(), kept["acts"])
    c = _as_rows(clean_acts, clean_acts)
    corr, grad = _as_rows(kept["acts"].detach(), c), _as_rows(grad, c)
    scores = ((c.to(grad.dtype).repeat(corr.shape[0] // c.shape[0], 1, 1) - corr) * grad).sum(0).double()
    seq = job.clean["input_ids"].shape[1]
    in_lm = clean_acts.dim() == 3 and clean_acts.shape[:2] == (1, seq)
    pos = check_indices(positions, scores.shape[0], "position(s)", range(scores.shape[0]))
    clean_final = logits[:, job.final].detach()
    base = Baseline(clean_final[0], final.detach(), score_of(job, clean_final), score_of(job, final.detach()))
    checks = run_checks(model, base.clean_logits, base.corrupted_logits, job.answer, base.clean_score,
                        base.corrupted_score, spec.min_effect)
    prep = PreparedTrace(spec, clean, job, item, Layout([]), AttributionEngine(), base, checks)
    toks = getattr(clean, "str_tokens", None)
    toks = toks[0] if toks is not None else []
    metric_d = dict(spec.metric.to_dict(), describe=spec.metric.describe(), probability=spec.metric.probability)
    fields = dict(str_tokens=toks, clean=base.clean_score, corrupted=base.corrupted_score, answer=item.answer,
                  answer_token=job.answer, metric=metric_d, checks=checks, settings=trace_settings(model, prep))
    labels = [fields["str_tokens"][p] if fields["str_tokens"] and in_lm else str(p) for p in pos]
    result = FeatureAttribution(hook=states, scores=scores[pos], positions=pos, token_labels=labels,
                                clean=fields["clean"], corrupted=fields["corrupted"], answer=fields["answer"],
                                answer_token=fields["answer_token"], metric=fields["metric"], checks=fields["checks"],
                                settings=fields["settings"])
    warn_if_ill_posed(result.checks, f"the feature attribution of {result.answer!r}")
    return result
