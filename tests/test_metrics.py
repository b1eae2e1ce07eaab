"""Metrics as values: every exact engine equals a brute-force `run_with_hooks` loop for each metric."""

import pytest
import torch
from transformer_lens.utilities import get_act_name

from lalm_lens.tracing import GaussianNoise, Silence, causal_trace, logit_diff, option_prob, token_groups
from lalm_lens.tracing.metrics import as_metric, metric_from_dict
from tests.tiny_models import ANSWER_PREFIX, PROMPT, clip

pytestmark = pytest.mark.filterwarnings("ignore::lalm_lens.tracing.IllPosedTraceWarning")


@pytest.fixture(scope="module")
def setup(qwen2_audio):
    model = qwen2_audio
    item = model.prepare(clip(1.0, seed=51), PROMPT, answer_prefix=ANSWER_PREFIX, options=["male", "female"],
                         sampling_rate=16000)
    male, female = model.to_single_token(" male"), model.to_single_token(" female")
    return model, item, male, female


def log_p_answer(logits):
    """A user's metric (TransformerLens convention: final-position logits in, one score per row out)."""
    return logits.log_softmax(-1)[:, 5]


def brute(model, item, corrupted, noise, states, cells, score):
    names = [get_act_name(states, l) for l in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(item, names_filter=names)

    def run(hooks):
        values = []
        for draw in ([None] if noise is None else list(noise)):
            extra = [] if draw is None else [("hook_audio_embeds", lambda x, hook, d=draw: x + d)]
            with torch.no_grad():
                logits = model.run_with_hooks(corrupted, fwd_hooks=hooks + extra)
            values.append(score(logits[:, -1]).item())
        return sum(values) / len(values)

    out = []
    for layers, positions in cells:
        def patch(act, hook, positions=positions):
            act[:, positions] = cache[hook.name][:, positions]
            return act

        out.append(run([(get_act_name(states, l), patch) for l in layers]))
    return run([]), out


@pytest.mark.parametrize("engine", ["fast", "reference"])
@pytest.mark.parametrize("metric_name", ["answer_prob", "logit_diff", "option_prob", "custom"])
@pytest.mark.parametrize("corruption", ["silence", "noise"])
def test_engines_equal_brute_force_for_each_metric(setup, engine, metric_name, corruption):
    model, item, male, female = setup
    metric, score = {
        "answer_prob": ("answer_prob", lambda lg: lg.float().softmax(-1)[:, male]),
        "logit_diff": (logit_diff(foil="female"), lambda lg: lg[:, male] - lg[:, female]),
        "option_prob": (option_prob(["male", "female"]), lambda lg: lg[:, [male, female]].softmax(-1)[:, 0]),
        "custom": (log_p_answer, lambda lg: lg.log_softmax(-1)[:, 5]),
    }[metric_name]
    groups = token_groups(item)
    positions = [groups.index("object"), len(groups) - 1]
    value = Silence() if corruption == "silence" else GaussianNoise(n_samples=2, seed=9)
    result = causal_trace(model, item, value, answer="male", metric=metric, mode="tokens", states="resid_post",
                          positions=positions, engine=engine)
    if corruption == "silence":
        import numpy as np

        corrupted, noise = model.prepare_like(item, np.zeros_like(item.waveform)), None
    else:
        with torch.no_grad():
            _, c = model.run_with_cache(item, names_filter="hook_audio_embeds")
        audio = c["hook_audio_embeds"]
        gen = torch.Generator().manual_seed(9)
        noise = torch.randn((2, *audio.shape), generator=gen) * 3.0 * audio.std().item()
        corrupted = item
    cells = [((l,), [p]) for l in range(model.cfg.n_layers) for p in positions]
    corr_value, expected = brute(model, item, corrupted, noise, "resid_post", cells, score)
    assert abs(result.corrupted - corr_value) <= 1e-5
    assert torch.allclose(result.patched.flatten(), torch.tensor(expected, dtype=torch.float64), atol=1e-5)
    rr = (result.patched - result.corrupted) / (result.clean - result.corrupted)
    assert torch.allclose(result.recovery, rr, equal_nan=True)  # recovery is the metric's
    assert result.metric["name"] == ("log_p_answer" if metric_name == "custom" else metric_name)


def test_probability_names_only_for_probability_metrics(setup):
    model, item, _, _ = setup
    result = causal_trace(model, item, answer="male", metric=logit_diff(foil="female"), mode="layers", layers=[1])
    with pytest.raises(AttributeError, match="not a probability"):
        result.p_clean
    assert isinstance(result.clean, float)


def test_metric_defaults_come_from_the_item(setup):
    model, item, male, female = setup
    a = causal_trace(model, item, answer="male", metric="option_prob", mode="layers", layers=[1])
    b = causal_trace(model, item, answer="male", metric=option_prob(["male", "female"]), mode="layers", layers=[1])
    assert torch.equal(a.patched, b.patched)
    c = causal_trace(model, item, answer="male", metric="logit_diff", mode="layers", layers=[1])
    d = causal_trace(model, item, answer="male", metric=logit_diff(foil="female"), mode="layers", layers=[1])
    assert torch.equal(c.patched, d.patched)


def test_metric_errors_are_clear(setup):
    model, item, _, _ = setup
    bare = model.prepare(clip(1.0), PROMPT, answer_prefix=ANSWER_PREFIX, sampling_rate=16000)  # no options
    with pytest.raises(ValueError, match="option_prob\\(\\) needs options"):
        causal_trace(model, bare, answer="male", metric="option_prob")
    with pytest.raises(ValueError, match="is not one of the options"):
        causal_trace(model, item, answer="The", metric=option_prob(["male", "female"]))
    with pytest.raises(ValueError, match="one score per row"):
        causal_trace(model, item, answer="male", metric=lambda logits: logits[:, :2], mode="layers", layers=[1])
    assert metric_from_dict(as_metric(logit_diff(foil="female")).to_dict()) == logit_diff(foil="female")
