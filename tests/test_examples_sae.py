"""The README's SAE-feature and steering findings come from `examples/sae_features.py` and
`examples/steering.py`: their cores, on a tiny seeded budget, checked for what the README claims of
them (not for its numbers): the selection is the best AUC, the unedited runs are the model's own,
clamping a value's feature and steering along high − low raise P(that value), alpha = 0 is the identity."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lalm_lens import HookedLALM
from lalm_lens.demo import write_demo_dataset
from lalm_lens.features import AddDirection, load_sae
from lalm_lens.tracing import read_items
from lalm_lens.tracing.pipeline import answer_token

ROOT = Path(__file__).resolve().parents[1]


def example(name):
    if str(ROOT / "examples") not in sys.path:  # as when the script runs: its folder first on the path
        sys.path.insert(0, str(ROOT / "examples"))
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def demo():
    return HookedLALM.from_pretrained("demo", device="cpu")


@pytest.fixture(scope="module")
def features_run(tmp_path_factory):
    sf = example("sae_features")
    out = tmp_path_factory.mktemp("sae_features")
    summary = sf.run(n=24, seed=5, steps=80, d_sae=32, k=4, out=out, hooks=(sf.AUDIO_HOOK,), scales=(8.0,))
    return sf, out, summary


def test_auc_is_the_pairwise_win_rate():
    sf = example("sae_features")
    pos, neg = np.array([3.0, 1.0, 2.0]), np.array([0.0, 2.0])
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg) / 6
    assert sf.auc(pos, neg) == pytest.approx(wins) and sf.auc(pos, neg) + sf.auc(neg, pos) == pytest.approx(1.0)


def test_sae_report_and_feature_choice(features_run, demo):
    sf, out, summary = features_run
    r = summary["saes"][sf.AUDIO_HOOK]
    assert 0 < r["l0"] <= 4 and r["fvu"] < r["fvu_initial"] and 0 <= r["dead"] < 32
    sae = load_sae(out / "sae" / sf.AUDIO_HOOK / sf.AUDIO_HOOK, hook_name=sf.AUDIO_HOOK)
    items = read_items(out / "items" / "items.jsonl")
    fit, test = items[:18], items[18:]
    feats = sf.item_features(demo, sae, fit, sf.AUDIO_HOOK)
    for attribute, per_value in summary["features"][sf.AUDIO_HOOK].items():
        y = np.array([it.meta["attributes"][attribute] for it in fit])
        for value, entry in per_value.items():
            if not (y == value).any() or (y == value).all():
                continue
            aucs = [sf.auc(feats[y == value, f], feats[y != value, f]) for f in range(32)]
            assert entry["auc_fit"] == pytest.approx(max(aucs), abs=1e-4), (attribute, value)  # the best on fit
            assert entry["n_test"] == len(test)


def test_clamping_a_pitch_feature_raises_p_of_its_value_and_unedited_runs_are_the_models(features_run, demo):
    sf, out, summary = features_run
    rows = [r for r in summary["clamps"] if r["attribute"] == "pitch"]
    assert rows and all(r["scale"] == 8.0 for r in rows)
    for r in rows:  # the clamped feature pushes towards its own value on clips of another value
        assert r["p_target_after"] > r["p_target_before"], r
        assert r["target_after"] >= r["target_before"] == 0, r  # the demo answers its own pitch unedited
    sae = load_sae(out / "sae" / sf.AUDIO_HOOK / sf.AUDIO_HOOK, hook_name=sf.AUDIO_HOOK)
    item = sf.asked(read_items(out / "items" / "items.jsonl")[-1], "pitch")
    target = next(v for v in ("low", "middle", "high") if v != item.answer)
    result = sf.clamp_flips(demo, sae, [item], 0, [0.0], target, at_final=False)[0]
    inp = sf.prepare(demo, item)
    with torch.no_grad():
        p = float(demo(inp)[0, -1].softmax(-1)[answer_token(demo, inp, target)[0]])
    assert abs(result["p_target_before"] - p) < 1e-6  # with the error term, the model's own output


def test_steering_by_zero_is_the_identity_and_high_minus_low_raises_p_high(tmp_path, demo):
    st = example("steering")
    items = [st.asked(it, "pitch") for it in read_items(write_demo_dataset(tmp_path, n=30, seed=3))]
    inps = {v: [demo.prepare(it.audio, it.question, answer_prefix=it.answer_prefix, options=it.options)
                for it in items if it.answer == v] for v in ("low", "high")}
    hook = "blocks.2.hook_resid_post"
    d = st.direction(demo, inps, hook)
    manual = st.mean_state(demo, inps["high"], hook) - st.mean_state(demo, inps["low"], hook)
    assert torch.equal(d, manual) and d.shape == (demo.cfg.d_model,)
    inp = inps["low"][0]
    clean = demo(inp)
    zero = demo.run_with_hooks(inp, fwd_hooks=AddDirection(hook, d, 0.0, positions=st.FINAL).hooks(demo, inp))
    assert torch.equal(zero, clean)
    last = demo.model_inputs(inp)["input_ids"].shape[1] - 1  # FINAL ([-1]) is the last prompt position
    by_index = demo.run_with_hooks(inp, fwd_hooks=AddDirection(hook, d, 2.0, positions=[last]).hooks(demo, inp))
    by_final = demo.run_with_hooks(inp, fwd_hooks=AddDirection(hook, d, 2.0, positions=st.FINAL).hooks(demo, inp))
    assert torch.equal(by_index, by_final) and not torch.equal(by_final, clean)
    rows = st.dose_response(demo, inps["low"][:4], hook, d, (0.0, 1.0, 3.0), "high", ["low", "middle", "high"])
    assert rows[0]["delta"] == 0 and rows[0]["target_rate"] == rows[0]["target_rate_unsteered"] == 0
    assert rows[0]["answers"]["low"] == 4
    assert rows[-1]["p_target"] > rows[0]["p_target"] + 0.5 and rows[-1]["target_rate"] > 0  # it changes the answer
    assert all(r["p_ci"][0] <= r["p_target"] <= r["p_ci"][1] for r in rows)
