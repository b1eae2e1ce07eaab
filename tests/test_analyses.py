"""When in the clip, which heads, what each layer knows: every analysis equals a brute-force loop."""

import numpy as np
import pytest
import torch
from transformer_lens import patching
from transformer_lens.utilities import get_act_name

from lalm_lens.tracing import (GaussianNoise, HeadTrace, LensResult, Silence, TimeTrace, TraceResult, audio_time_trace,
                               head_trace, logit_diff, logit_lens)
from tests.tiny_models import ANSWER_PREFIX, PROMPT, clip

pytestmark = pytest.mark.filterwarnings("ignore::lalm_lens.tracing.IllPosedTraceWarning")


@pytest.fixture(scope="module")
def setup(qwen2_audio):
    model = qwen2_audio
    item = model.prepare(clip(1.3, seed=71), PROMPT, answer_prefix=ANSWER_PREFIX, options=["male", "female"],
                         sampling_rate=16000)
    with torch.no_grad():
        top = int(model(item)[0, -1].argmax())
    return model, item, top


def corrupted_of(model, item, corruption):
    """The corrupted input and noise draws, built independently of the library's interventions."""
    if isinstance(corruption, Silence):
        return model.prepare_like(item, np.zeros_like(item.waveform)), None
    with torch.no_grad():
        _, c = model.run_with_cache(item, names_filter="hook_audio_embeds")
    audio = c["hook_audio_embeds"]
    gen = torch.Generator().manual_seed(corruption.seed)
    return item, torch.randn((corruption.n_samples, *audio.shape), generator=gen) * corruption.scale * audio.std().item()


def brute(model, item, corruption, states, cells, score):
    """Per cell `(layers, positions, heads)`: the metric of the corrupted run with the clean states written back."""
    corrupted, noise = corrupted_of(model, item, corruption)
    names = [get_act_name(states, l) for l in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, cache = model.run_with_cache(item, names_filter=names)
    out = []
    for layers, positions, heads in cells:
        def patch(act, hook, positions=positions, heads=heads):
            for p in positions:
                if heads is None:
                    act[0, p] = cache[hook.name][0, p]
                else:
                    act[0, p, heads] = cache[hook.name][0, p, heads]
            return act

        values = []
        for draw in ([None] if noise is None else list(noise)):
            extra = [] if draw is None else [("hook_audio_embeds", lambda x, hook, d=draw: x + d)]
            with torch.no_grad():
                logits = model.run_with_hooks(corrupted, fwd_hooks=[(get_act_name(states, l), patch) for l in layers]
                                              + extra)
            values.append(score(logits[:, -1]).item())
        out.append(np.mean(values))
    return np.array(out)


@pytest.mark.parametrize("engine", ["fast", "reference"])
@pytest.mark.parametrize("corruption", [Silence(), GaussianNoise(n_samples=2, seed=5)], ids=["silence", "noise"])
def test_audio_time_sweep_equals_brute_force(setup, engine, corruption, tmp_path):
    model, item, top = setup
    result = audio_time_trace(model, item, corruption, answer=top, window_seconds=0.3, engine=engine)
    seconds = item.meta["audio_seconds"][0]
    assert result.windows[0][0] == 0 and len(result.windows) == 5  # 1.3 s in 0.3 s windows
    for (a, b), positions in zip(result.windows, result.window_positions):
        times = seconds[[item.audio_positions[0].tolist().index(p) for p in positions]]
        assert ((times >= a - 1e-9) & (times < b + 1e-9)).all()
    cells = [((l,), ps, None) for l in result.layers for ps in result.window_positions]
    expected = brute(model, item, corruption, "resid_post", cells, lambda lg: lg.float().softmax(-1)[:, top])
    delta = np.abs(result.patched.flatten().numpy() - expected).max()
    print(f"\n[audio-time {engine}, {type(corruption).__name__}] vs brute force: max |Δ| {delta:.1e}")
    assert delta <= 1e-5
    back = TraceResult.load(result.save(tmp_path / "t.json"))
    assert isinstance(back, TimeTrace) and back.windows == result.windows and torch.allclose(back.patched, result.patched)
    assert "s windows" in result.summary() and result.plot().get_ylabel() == "layer"


def test_audio_time_sweep_with_a_metric_and_refused_without_timing(setup, desta):
    model, item, top = setup
    male, female = model.to_single_token(" male"), model.to_single_token(" female")
    result = audio_time_trace(model, item, answer="male", metric=logit_diff(foil="female"), window_seconds=0.5,
                              layers=[0, 1])
    cells = [((l,), ps, None) for l in result.layers for ps in result.window_positions]
    expected = brute(model, item, Silence(), "resid_post", cells, lambda lg: lg[:, male] - lg[:, female])
    assert np.abs(result.patched.flatten().numpy() - expected).max() <= 1e-5
    inp = desta.prepare(clip(1.0), PROMPT, transcript="hello world", sampling_rate=16000)
    with pytest.raises(ValueError, match="Q-Former queries"):
        audio_time_trace(desta, inp, answer=5)
    with pytest.raises(ValueError, match="window_seconds"):
        audio_time_trace(model, item, answer=top, window_seconds=0)


@pytest.mark.parametrize("where", ["all", "final"])
def test_head_patching_equals_brute_force_and_transformer_lens(setup, where, tmp_path):
    model, item, top = setup
    result = head_trace(model, item, answer=top, positions=where)
    T = item.seq_len
    positions = list(range(T)) if where == "all" else [T - 1]
    H = model.cfg.n_heads
    cells = [((l,), positions, [h]) for l in range(model.cfg.n_layers) for h in range(H)]
    score = lambda lg: lg.float().softmax(-1)[:, top]  # noqa: E731
    expected = brute(model, item, Silence(), "z", cells, score)
    assert np.abs(result.patched.flatten().numpy() - expected).max() <= 1e-5
    corrupted, _ = corrupted_of(model, item, Silence())
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(item)
        metric = lambda logits: logits[0, -1].float().softmax(-1)[top]  # noqa: E731
        view = model.with_audio(corrupted)
        if where == "all":
            tl = patching.get_act_patch_attn_head_out_all_pos(view, corrupted.input_ids, clean_cache, metric)
        else:  # TransformerLens's by-position head patching, on the final position's cells only
            import pandas as pd

            cells = pd.DataFrame([(l, T - 1, h) for l in range(model.cfg.n_layers) for h in range(H)],
                                 columns=["layer", "pos", "head_index"])
            tl = patching.get_act_patch_attn_head_out_by_pos(view, corrupted.input_ids, clean_cache, metric,
                                                             index_axis_names=None, index_df=cells)
            tl = tl.view(model.cfg.n_layers, H)
    delta = (result.patched.float() - tl.float()).abs().max().item()
    print(f"\n[heads at {where} positions] vs transformer_lens.patching: max |Δ| {delta:.1e}")
    assert delta <= 1e-5
    with torch.no_grad():
        _, cache = model.run_with_cache(item, names_filter=lambda n: n.endswith("hook_pattern"))
    audio = item.audio_positions[0]
    mass = [[cache[get_act_name("pattern", l)][0, h, -1, audio].sum().item() for h in range(H)]
            for l in range(model.cfg.n_layers)]
    assert np.allclose(result.attention_clean, mass, atol=1e-6)
    back = TraceResult.load(result.save(tmp_path / "h.json"))
    assert isinstance(back, HeadTrace) and back.attention_corrupted == result.attention_corrupted
    assert "top heads" in result.summary() and result.plot().get_xlabel() == "head"


def test_logit_lens_equals_a_forward_stopped_at_each_layer(setup, tmp_path):
    model, item, top = setup
    result = logit_lens(model, item, answer=top)
    corrupted, _ = corrupted_of(model, item, Silence())
    audio = item.audio_positions[0].tolist()
    with torch.no_grad():
        for l in range(model.cfg.n_layers):
            for run, values in ((item, result.clean), (corrupted, result.corrupted)):
                logits = model.readout(model(run, stop_at_layer=l + 1))
                assert abs(logits[0, -1].float().softmax(-1)[top].item() - values[l]) <= 1e-5
            logits = model.readout(model(item, stop_at_layer=l + 1))[0, audio]
            assert result.audio_rank[l] == (logits > logits[:, top : top + 1]).sum(-1).tolist()
        final = model(item)[0, -1].float().softmax(-1)
    assert abs(final[top].item() - result.clean[-1]) <= 1e-6  # the last layer is the model's own output
    assert result.clean_top[-1][0][2] == top
    back = LensResult.load(result.save(tmp_path / "lens.json"))
    assert back.audio_rank == result.audio_rank and back.clean == result.clean
    assert "logit lens" in result.summary() and result.plot().get_xlabel() == "after layer"
    with pytest.raises(ValueError, match="top_k"):
        logit_lens(model, item, answer=top, top_k=0)
