"""No silent wrong numbers: engines equal under user hooks, ill-posed traces flagged, arguments checked first."""

import json
import warnings

import numpy as np
import pytest
import torch

from lalm_lens import HookedLALM
from lalm_lens.tracing import (GaussianNoise, IllPosedTraceWarning, Silence, TraceResult, WhiteNoise, attention_knockout,
                               causal_trace, token_groups, trace_dataset)
from tests.tiny_models import ANSWER_PREFIX, PROMPT, clip

pytestmark = pytest.mark.filterwarnings("ignore::lalm_lens.tracing.IllPosedTraceWarning")


@pytest.fixture(scope="module")
def item(qwen2_audio):
    inp = qwen2_audio.prepare(clip(1.2, seed=41), PROMPT, answer_prefix=ANSWER_PREFIX, options=["male", "female"],
                              sampling_rate=16000)
    with torch.no_grad():
        inp.meta["top"] = int(qwen2_audio(inp)[0, -1].argmax())
    return inp


def positions_of(item):
    groups = token_groups(item)
    return [groups.index("early_prompt"), groups.index("object"), len(groups) - 2, len(groups) - 1]


def scale(factor):
    def hook(act, hook):
        return act * factor
    return hook


def zero_at_13(act, hook):
    act[:, 13] = 0
    return act


def zero_first_15(act, hook):
    act[:, 0:15] = 0
    return act


def flatten_attention(pattern, hook):
    """Move half of every query's attention onto its first key (a hook that changes the numbers)."""
    pattern = pattern * 0.5
    pattern[..., 0] += 0.5
    return pattern


USER_HOOKS = {  # name -> (hook point, hook, the fast engine can honour it without falling back)
    "audio_embeds": ("hook_audio_embeds", scale(0.5), True),
    "encoder_block": ("audio_encoder.blocks.0.hook_resid_post", scale(0.5), True),
    "lm_resid_pre": ("blocks.1.hook_resid_pre", scale(0.7), False),
    "pattern": ("blocks.0.attn.hook_pattern", flatten_attention, False),
    "position_13": ("blocks.0.hook_resid_post", zero_at_13, False),
    "positions_0_15_embed": ("hook_embed", zero_first_15, True),
}


@pytest.mark.parametrize("mode", ["tokens", "layers"])
@pytest.mark.parametrize("case", sorted(USER_HOOKS))
@pytest.mark.parametrize("corruption", ["silence", "noise"])
def test_fast_equals_reference_with_user_hooks(qwen2_audio, item, case, mode, corruption):
    name, fn, honoured = USER_HOOKS[case]
    model = qwen2_audio
    value = Silence() if corruption == "silence" else GaussianNoise(n_samples=2, seed=4)
    kw = dict(answer=item.meta["top"], mode=mode, positions=positions_of(item))
    model.add_hook(name, fn)
    try:
        ref = causal_trace(model, item, value, engine="reference", **kw)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            fast = causal_trace(model, item, value, **kw)
    finally:
        model.reset_hooks(including_permanent=True)
    plain = causal_trace(model, item, value, engine="reference", **kw)
    fell_back = [w for w in caught if "uses the reference engine" in str(w.message)]
    assert bool(fell_back) == (not honoured), [str(w.message) for w in caught]
    assert fast.settings["engine"]["name"] == ("fast" if honoured else "reference")
    delta = max(abs(ref.corrupted - fast.corrupted), (ref.patched - fast.patched).abs().max().item(),
                abs(ref.clean - fast.clean))
    print(f"\n[user hook {case}, {mode}, {corruption}] fast vs reference max |Δ| {delta:.1e}")
    assert delta <= 1e-5
    assert (plain.patched - ref.patched).abs().max().item() > 1e-4  # the hook really changes the trace


def test_audio_hooks_fire_once_per_forward_with_the_plain_shapes(qwen2_audio, item):
    """The fast engine's clean and corrupted runs are plain forwards: a hook on `hook_audio_embeds` sees
    `[n_audio, d]` once per run (clean, corrupted), never the two concatenated."""
    model = qwen2_audio
    shapes = []
    model.add_hook("hook_audio_embeds", lambda act, hook: shapes.append(tuple(act.shape)))
    try:
        causal_trace(model, item, answer=item.meta["top"], mode="layers")
    finally:
        model.reset_hooks(including_permanent=True)
    n_audio = len(item.audio_positions[0])
    assert shapes == [(n_audio, model.cfg.d_model)] * 2


# ---------------------------------------------------------------- ill-posed traces
@pytest.fixture(scope="module")
def demo():
    return HookedLALM.from_pretrained("demo", device="cpu")


@pytest.fixture(scope="module")
def demo_item(demo, tmp_path_factory):
    from lalm_lens.demo import demo_example

    audio, prompt, answer, options, prefix = demo_example(tmp_path_factory.mktemp("demo") / "a.wav", seed=0)
    return demo.prepare(audio, prompt, answer_prefix=prefix, options=options), answer


def test_noise_on_the_demo_is_flagged_ill_posed(demo, demo_item, tmp_path):
    inp, answer = demo_item
    with pytest.warns(IllPosedTraceWarning, match="ill-posed: the corrupted run still predicts the answer"):
        result = causal_trace(demo, inp, "noise", answer=answer, mode="layers")
    assert result.ill_posed and {c.name for c in result.checks.failed} >= {"corrupted_top1", "effect"}
    assert "WARNING ill-posed" in result.summary()
    saved = json.loads(result.save(tmp_path / "r.json").read_text())
    assert saved["ill_posed"] is True and any(not c["passed"] for c in saved["checks"])
    assert "ill-posed" in result.plot().get_title()
    assert np.isfinite(result.recovery.numpy()).all()  # still computable for those who want it


def test_wrong_answer_is_flagged_and_silence_is_well_posed(demo, demo_item):
    inp, answer = demo_item
    good = causal_trace(demo, inp, answer=answer, mode="layers")
    assert not good.ill_posed and good.checks.ok and "WARNING" not in good.summary()
    wrong = "high" if answer != "high" else "low"
    with pytest.warns(IllPosedTraceWarning, match="the clean run predicts"):
        bad = causal_trace(demo, inp, answer=wrong, mode="layers")
    assert [c.name for c in bad.checks.failed][0] == "clean_top1"


@pytest.mark.parametrize("answer", ["banana", "Low"])
def test_an_answer_outside_the_vocabulary_is_an_error(demo, demo_item, answer):
    inp, _ = demo_item
    with pytest.raises(ValueError, match="not in the vocabulary"):
        causal_trace(demo, inp, answer=answer, mode="layers")


def test_min_effect_default_and_override(demo, demo_item):
    inp, answer = demo_item
    result = causal_trace(demo, inp, answer=answer, mode="layers")
    assert result.settings["min_effect"] == 0.1  # probabilities: RR's denominator must be at least 0.1
    strict = causal_trace(demo, inp, answer=answer, mode="layers", min_effect=1.5)
    assert [c.name for c in strict.checks.failed] == ["effect"]


def test_dataset_filter_uses_the_same_checks(demo, tmp_path):
    from lalm_lens.demo import write_demo_dataset

    path = write_demo_dataset(tmp_path / "data", n=3, seed=7)
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    lines[1]["answer"] = next(o for o in lines[1]["options"] if o != lines[1]["answer"])  # a wrong answer
    result = trace_dataset(demo, lines_to_items(lines, path.parent), mode="layers", progress=False)
    status = {r["id"]: r["status"] for r in result.records}
    assert status[lines[1]["id"]] == "dropped_clean_wrong"
    kept = [r for r in result.records if r["status"] == "ok"]
    for record in kept:
        assert all(c["passed"] for c in record["checks"])


def lines_to_items(lines, folder):
    return [dict(line, audio=str(folder / line["audio"])) for line in lines]


# ---------------------------------------------------------------- every argument checked before any work
@pytest.fixture
def no_forward(qwen2_audio, monkeypatch):
    """Fails the test if the model runs: argument errors must come first."""
    monkeypatch.setattr(type(qwen2_audio), "forward", lambda *a, **k: pytest.fail("the model ran before the check"))


@pytest.mark.parametrize("kwargs, message", [
    (dict(states="pattern"), "no position axis"),
    (dict(states="resid_prex"), r"choose from resid_pre, resid_mid"),
    (dict(positions=[]), "position\\(s\\) is empty"),
    (dict(layers=[]), "layer\\(s\\) is empty"),
    (dict(layers=[0, 0]), "given more than once"),
    (dict(layers=[-1]), "outside the valid range"),
    (dict(positions=[-3]), "outside the valid range"),
    (dict(window=0), "window must be an integer >= 1"),
    (dict(mode="token"), "mode must be"),
    (dict(corruption=GaussianNoise(n_samples=0)), "n_samples"),
    (dict(corruption=GaussianNoise(scale=0)), "scale"),
    (dict(corruption=GaussianNoise(scale=float("nan"))), "scale"),
    (dict(corruption=WhiteNoise(snr_db=float("inf"))), "snr_db"),
    (dict(corruption=WhiteNoise(snr_db=float("nan"))), "snr_db"),
    (dict(corruption=GaussianNoise(scale=-1.0)), "scale"),
    (dict(corruption=GaussianNoise(scale=float("inf"))), "scale"),
    (dict(corruption="swap"), "Swap\\(audio\\)"),
    (dict(metric="kl"), "unknown metric"),
    (dict(engine="turbo"), "engine must be"),
    (dict(min_effect=float("nan")), "min_effect"),
])
def test_bad_arguments_are_refused_before_any_work(qwen2_audio, item, no_forward, kwargs, message):
    with pytest.raises((ValueError, TypeError), match=message):
        causal_trace(qwen2_audio, item, answer=item.meta["top"], **kwargs)


def test_answer_types(qwen2_audio, item, no_forward):
    with pytest.raises(TypeError, match="not bool"):
        causal_trace(qwen2_audio, item, answer=True)
    with pytest.raises(TypeError, match="not float"):
        causal_trace(qwen2_audio, item, answer=1.0)
    with pytest.raises(ValueError, match="outside the vocabulary"):
        causal_trace(qwen2_audio, item, answer=10**6)


def test_numpy_integer_answers_are_accepted(qwen2_audio, item):
    a = causal_trace(qwen2_audio, item, answer=np.int64(item.meta["top"]), mode="layers", layers=[1])
    assert a.answer_token == item.meta["top"]


def test_knockout_arguments(qwen2_audio, item, no_forward):
    with pytest.raises(ValueError, match="outside the valid range"):
        attention_knockout(qwen2_audio, item, answer=item.meta["top"], layers=[7])
    with pytest.raises(ValueError, match="window must be"):
        attention_knockout(qwen2_audio, item, answer=item.meta["top"], window=0)


def test_knockout_summary_and_plot(qwen2_audio, item):
    result = attention_knockout(qwen2_audio, item, answer=item.meta["top"])
    assert "drop by layer" in result.summary() and "P(clean)" in result.summary()
    assert "attention final -> audio" in result.plot().get_title()


# ---------------------------------------------------------------- results on disk
@pytest.fixture(scope="module")
def result(qwen2_audio, item):
    return causal_trace(qwen2_audio, item, answer=item.meta["top"], positions=positions_of(item), engine="reference")


def test_saved_json_is_valid_with_a_schema_and_nan_as_null(result, tmp_path):
    weird = TraceResult.from_json(dict(result.to_json(), corrupted=result.clean))  # RR undefined: NaN everywhere
    path = weird.save(tmp_path / "nan.json")
    text = path.read_text()
    assert "NaN" not in text and json.loads(text)["schema"] == 2 and "null" in text
    back = TraceResult.load(path)
    assert torch.isnan(back.recovery).all()


def test_load_refuses_truncated_newer_or_inconsistent_files(result, tmp_path):
    path = result.save(tmp_path / "r.json")
    (tmp_path / "cut.json").write_text(path.read_text()[:200])
    with pytest.raises(ValueError, match="truncated or not JSON"):
        TraceResult.load(tmp_path / "cut.json")
    newer = dict(json.loads(path.read_text()), schema=99)
    (tmp_path / "new.json").write_text(json.dumps(newer))
    with pytest.raises(ValueError, match="schema 99"):
        TraceResult.load(tmp_path / "new.json")
    short = json.loads(path.read_text())
    short["patched"] = short["patched"][:-1]
    (tmp_path / "short.json").write_text(json.dumps(short))
    with pytest.raises(ValueError, match="patched has shape"):
        TraceResult.load(tmp_path / "short.json")


def test_save_by_extension(result, tmp_path):
    import pandas as pd

    frame = pd.read_csv(result.save(tmp_path / "r.csv"))
    assert len(frame) == len(result.layers) * len(result.positions) and "recovery" in frame
    with pytest.raises(ValueError, match="use .json, .npz or .csv"):
        result.save(tmp_path / "r.txt")


def test_a_batch_is_refused_before_any_work(qwen2_audio, no_forward):
    batch = qwen2_audio.prepare([clip(1.0), clip(1.5)], [PROMPT, PROMPT], sampling_rate=16000)
    with pytest.raises(ValueError, match="trace one item at a time"):
        causal_trace(qwen2_audio, batch, answer=5)


def test_hooks_below_the_traced_layers_are_honoured_without_falling_back(qwen2_audio, item):
    """A user hook on block 0 while tracing layer 1: the fast engine keeps it (its corrupted run has it)."""
    model = qwen2_audio
    kw = dict(answer=item.meta["top"], mode="tokens", layers=[1], positions=positions_of(item))
    model.add_hook("blocks.0.hook_resid_post", scale(0.6))
    try:
        ref = causal_trace(model, item, engine="reference", **kw)
        with warnings.catch_warnings():
            warnings.simplefilter("error", UserWarning)  # no fallback warning
            warnings.simplefilter("ignore", IllPosedTraceWarning)
            fast = causal_trace(model, item, **kw)
    finally:
        model.reset_hooks(including_permanent=True)
    assert fast.settings["engine"]["name"] == "fast"
    assert (ref.patched - fast.patched).abs().max().item() <= 1e-5
