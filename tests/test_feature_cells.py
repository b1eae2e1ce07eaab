"""Feature cells in `causal_trace`: clean SAE feature activations restored per (position, feature), held to a
hand-written hooked loop (the clean activations written into the corrupted run at the feature hook)."""

import warnings

import pytest
import torch

from lalm_lens.features import cells as feature_cells
from lalm_lens.features.sae import SAE, SAEConfig
from lalm_lens.tracing import GaussianNoise, Silence, TraceResult, causal_trace
from tests.test_features import item  # noqa: F401  (the traced item, a fixture)

RESID = "blocks.1.hook_resid_post"
ENCODER = "audio_encoder.blocks.0.hook_resid_post"


def _sae(d, hook, activation="topk", seed=5, **kw):
    k = 6 if activation == "topk" else None
    return SAE.random(SAEConfig(d, 4 * d, activation=activation, k=k, hook_name=hook, **kw), seed=seed, std=0.2)


@torch.no_grad()
def brute_force(model, item, acts_hook, cells, corruption=Silence(), logit=False):
    """P(answer) (or the answer's logit) of the corrupted run with the clean activations of each
    (positions, features) cell written in."""
    answer = item.meta["answer"]
    clean = model.run_with_cache(item, names_filter=acts_hook)[1][acts_hook]
    corr = corruption.apply(model, item)
    out = []
    for positions, features in cells:
        def write(act, hook, positions=positions, features=features):
            for p in positions:
                for f in (range(act.shape[-1]) if features is None else features):
                    act[:, p, f] = clean[0, p, f]
            return act

        logits = model.run_with_hooks(corr.batch(), fwd_hooks=corr.hooks() + [(acts_hook, write)])
        final = logits[:, -1].float()
        out.append((final if logit else final.softmax(-1))[:, answer].double().mean().item())
    return torch.tensor(out, dtype=torch.float64)


def _moving_features(model, item, acts_hook, n=3):
    """The features whose activation at the final position moves most between clean and silence."""
    clean = model.run_with_cache(item, names_filter=acts_hook)[1][acts_hook][0, -1]
    corr = Silence().apply(model, item)
    silent = model.run_with_cache(corr.batch(), names_filter=acts_hook)[1][acts_hook][0, -1]
    return (clean - silent).abs().argsort(descending=True)[:n].tolist()


def _no_fallback(caught):
    assert not [w for w in caught if "reference engine" in str(w.message)], [str(w.message) for w in caught]


@pytest.mark.parametrize("engine,error_term,activation", [("fast", True, "topk"), ("fast", False, "jumprelu"),
                                                          ("reference", True, "relu")])
def test_feature_cells_equal_brute_force(qwen2_audio, item, engine, error_term, activation, monkeypatch):
    monkeypatch.setattr(feature_cells, "CHUNK", 5)  # the fast engine's cells in several calls
    model = qwen2_audio
    sae = _sae(model.cfg.d_model, RESID, activation)
    hook = f"{RESID}.hook_sae_acts_post"
    seq = item["input_ids"].shape[1]
    positions = list(range(seq - 4, seq))
    # without the error term the reconstruction leaves P(answer) near 0: score the answer's logit there
    metric = None if error_term else (lambda logits: logits[:, item.meta["answer"]])
    with model.saes([sae], use_error_term=error_term), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        features = _moving_features(model, item, hook)
        trace = causal_trace(model, item, answer=item.meta["answer"], states=hook, features=features,
                             positions=positions, engine=engine, metric=metric)
        want = brute_force(model, item, hook, [((p,), (f,)) for p in positions for f in features],
                           logit=not error_term)
    _no_fallback(caught)
    assert trace.settings["engine"]["name"] == engine and trace.patched.shape == (len(positions), len(features))
    err = (trace.patched.flatten() - want).abs().max().item()
    print(f"feature cells {engine} error_term={error_term} {activation}: max |Δ| {err:.2e}")
    assert err <= 1e-6, err
    assert (want - trace.corrupted).abs().max() > 1e-4  # the cells really moved the metric
    top = trace.top(2)
    assert top[0]["recovery"] == pytest.approx(float(trace.recovery.max())) and top[0]["feature"] in features
    sae.use_error_term = True


def test_all_features_and_all_positions_at_once(qwen2_audio, item, tmp_path):
    model = qwen2_audio
    sae = _sae(model.cfg.d_model, RESID, "topk", seed=6)
    hook = f"{RESID}.hook_sae_acts_post"
    seq = item["input_ids"].shape[1]
    positions = [seq - 3, seq - 1]
    with model.saes([sae]):
        per_pos = causal_trace(model, item, answer=item.meta["answer"], states=hook, positions=positions,
                               min_effect=0.0)
        together = causal_trace(model, item, answer=item.meta["answer"], states=hook, positions=positions,
                                mode="layers", engine="reference", min_effect=0.0)
        want = brute_force(model, item, hook, [((p,), None) for p in positions] + [(tuple(positions), None)])
    got = torch.cat([per_pos.patched.flatten(), together.patched.flatten()])
    err = (got - want).abs().max().item()
    print(f"all features at once: max |Δ| {err:.2e}")
    assert err <= 1e-6, err
    assert per_pos.features == [] and together.patched.shape == (1, 1) and "all features" in per_pos.summary()
    again = TraceResult.load(per_pos.save(tmp_path / "features.json"))
    assert "feature" in per_pos.to_html(tmp_path / "features.html").read_text()  # its page (pages.BUILT_IN)
    assert type(again) is type(per_pos) and torch.equal(again.patched, per_pos.patched) and again.hook == hook


def test_transcoder_feature_cells_fast(qwen2_audio, item):
    model = qwen2_audio
    d = model.cfg.d_model
    tc = _sae(d, "blocks.0.ln2.hook_normalized", "relu", seed=8, apply_b_dec_to_input=False,
              hook_name_out="blocks.0.hook_mlp_out")
    hook = "blocks.0.hook_mlp_out.hook_sae_acts_post"
    seq = item["input_ids"].shape[1]
    positions = [seq - 2, seq - 1]
    with model.saes([tc]), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        features = _moving_features(model, item, hook, n=2)
        trace = causal_trace(model, item, answer=item.meta["answer"], states=hook, features=features,
                             positions=positions)
        want = brute_force(model, item, hook, [((p,), (f,)) for p in positions for f in features])
    _no_fallback(caught)
    err = (trace.patched.flatten() - want).abs().max().item()
    print(f"transcoder feature cells fast: max |Δ| {err:.2e}")
    assert trace.settings["engine"]["name"] == "fast" and err <= 1e-6, err


@pytest.mark.parametrize("where", ["encoder", "noise"])
def test_fast_engine_falls_back_saying_why(qwen2_audio, item, where):
    model = qwen2_audio
    if where == "encoder":
        d = model.run_with_cache(item, names_filter=ENCODER)[1][ENCODER].shape[-1]
        sae, corruption, positions, why = _sae(d, ENCODER), Silence(), [3, 7], "outside the language model"
    else:
        seq = item["input_ids"].shape[1]
        sae, corruption, positions, why = _sae(model.cfg.d_model, RESID), GaussianNoise(n_samples=2, seed=1), \
            [seq - 1], "noise samples"
    hook = f"{sae.cfg.hook_name}.hook_sae_acts_post"
    with model.saes([sae]):
        with pytest.warns(UserWarning, match=why):
            trace = causal_trace(model, item, corruption, answer=item.meta["answer"], states=hook, features=[0, 5],
                                 positions=positions, min_effect=0.0)
        want = brute_force(model, item, hook, [((p,), (f,)) for p in positions for f in (0, 5)], corruption)
    err = (trace.patched.flatten() - want).abs().max().item()
    print(f"fallback ({where}): max |Δ| {err:.2e}")
    assert trace.settings["engine"]["name"] == "reference" and err <= 1e-6, err


def test_feature_trace_refuses_bad_input(qwen2_audio, item):
    model = qwen2_audio
    answer = item.meta["answer"]
    with pytest.raises(ValueError, match="no SAE is spliced"):
        causal_trace(model, item, answer=answer, states=f"{RESID}.hook_sae_acts_post")
    sae = _sae(model.cfg.d_model, RESID)
    hook = f"{RESID}.hook_sae_acts_post"
    with model.saes([sae]):
        with pytest.raises(ValueError, match=r"feature\(s\) \[9999\] outside"):
            causal_trace(model, item, answer=answer, states=hook, features=[9999])
        with pytest.raises(ValueError, match="layers= and window="):
            causal_trace(model, item, answer=answer, states=hook, layers=[0])
        with pytest.raises(ValueError, match="feature_attribution"):
            causal_trace(model, item, answer=answer, states=hook, engine="attribution")
        with pytest.raises(ValueError, match="hook_sae_acts_post or hook_sae_acts_pre"):
            causal_trace(model, item, answer=answer, states=f"{RESID}.hook_sae_recons")
        with pytest.raises(TypeError, match="unexpected"):
            causal_trace(model, item, answer=answer, states=hook, feature=[1])
