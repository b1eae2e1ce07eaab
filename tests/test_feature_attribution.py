"""Feature attribution (gradient x (clean − corrupted) activation): equal to the hand-written product, and
on a metric linear in the feature activations equal to the exact patch effect of each feature."""

import pytest
import torch

from lalm_lens.features.attribution import feature_attribution
from lalm_lens.features.sae import SAE, SAEConfig
from lalm_lens.tracing import Silence, causal_trace
from tests.test_features import item  # noqa: F401  (the traced item, a fixture)

RESID = "blocks.1.hook_resid_post"


def _sae(d, hook, seed=5):
    return SAE.random(SAEConfig(d, 4 * d, activation="topk", k=6, hook_name=hook), seed=seed, std=0.2)


def test_attribution_is_gradient_times_delta(qwen2_audio, item, tmp_path):
    model, answer = qwen2_audio, item.meta["answer"]
    sae = _sae(model.cfg.d_model, RESID)
    hook = f"{RESID}.hook_sae_acts_post"
    with model.saes([sae]):
        attr = feature_attribution(model, item, answer=answer, states=hook, min_effect=0.0)
        # by hand: the corrupted run with the feature activations as a leaf, P(answer), backward
        with torch.no_grad():
            clean = model.run_with_cache(item, names_filter=hook)[1][hook][0]
        corr = Silence().apply(model, item)
        leaf = {}

        def keep(act, hook):
            leaf["a"] = act.detach().requires_grad_()
            return leaf["a"]

        logits = model.run_with_hooks(corr.batch(), fwd_hooks=[(hook, keep)])
        logits[0, -1].softmax(-1)[answer].backward()
        want = (clean - leaf["a"].detach()[0]) * leaf["a"].grad[0]
    err = (attr.scores - want.double()).abs().max().item()
    print(f"attribution vs hand-written gradient x delta: max |Δ| {err:.2e}")
    assert attr.scores.shape == (item["input_ids"].shape[1], sae.cfg.d_sae) and err <= 1e-6, err
    assert want.abs().max() > 1e-6  # a real signal
    top = attr.top(3)
    assert top[0]["attribution"] == pytest.approx(float(attr.per_feature.max()))
    assert [t["feature"] for t in top] == attr.per_feature.argsort(descending=True)[:3].tolist()
    assert "feature" in attr.summary() and attr.save(tmp_path / "attr.json").exists()


def test_attribution_is_exact_where_the_metric_is_linear_in_the_features(qwen2_audio, item):
    """After `ln_final` the model is linear (the unembedding): an SAE there, with its error term, makes the
    answer's logit linear in the feature activations, so gradient x Δ is the exact patch effect."""
    model, answer = qwen2_audio, item.meta["answer"]
    hook_point = "ln_final.hook_normalized"
    sae = _sae(model.cfg.d_model, hook_point, seed=12)
    hook = f"{hook_point}.hook_sae_acts_post"
    logit = lambda logits: logits[:, answer]  # noqa: E731
    final = item["input_ids"].shape[1] - 1
    with model.saes([sae]):
        attr = feature_attribution(model, item, answer=answer, states=hook, metric=logit, min_effect=0.0)
        at_final = attr.scores[final]
        features = at_final.abs().argsort(descending=True)[:4].tolist()
        exact = causal_trace(model, item, answer=answer, states=hook, features=features, positions=[final],
                             metric=logit, min_effect=0.0, engine="reference")
        every = causal_trace(model, item, answer=answer, states=hook, positions=[final], metric=logit,
                             min_effect=0.0, engine="reference")
    effect = exact.patched[0] - exact.corrupted
    err = max((effect - at_final[features]).abs().max().item(),
              abs(float(every.patched[0, 0] - every.corrupted) - float(at_final.sum())))
    print(f"attribution vs exact patch effect (linear metric): max |Δ| {err:.2e}")
    assert effect.abs().max() > 1e-3 and err <= 1e-5, err
    assert attr.scores[:final].abs().max() == 0  # other positions cannot reach the final logits after ln_final


def test_attribution_refuses_bad_input(qwen2_audio, item):
    with pytest.raises(ValueError, match="no SAE is spliced"):
        feature_attribution(qwen2_audio, item, answer=item.meta["answer"], states=f"{RESID}.hook_sae_acts_post")
    with qwen2_audio.saes([_sae(qwen2_audio.cfg.d_model, RESID)]):
        with pytest.raises(ValueError, match="outside the valid range"):
            feature_attribution(qwen2_audio, item, answer=item.meta["answer"], states=f"{RESID}.hook_sae_acts_post",
                                positions=[10_000])
