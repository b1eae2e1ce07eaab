"""Causal tracing: every mode / state / corruption against a brute-force `run_with_hooks` loop."""

import json

import numpy as np
import pytest
import soundfile
import torch
from transformer_lens import patching
from transformer_lens.utilities import get_act_name

from lalm_lens.tracing import (GaussianNoise, Silence, Swap, TraceResult, WhiteNoise, attention_knockout, causal_trace,
                               token_groups, trace_dataset)
from tests.tiny_models import ANSWER_PREFIX, PROMPT, clip

# random tiny models: their traces are ill-posed on purpose (tests that expect the warning use pytest.warns)
pytestmark = pytest.mark.filterwarnings("ignore::lalm_lens.tracing.IllPosedTraceWarning")

OPTIONS = ["male", "female"]


@pytest.fixture(scope="module")
def item(qwen2_audio):
    return qwen2_audio.prepare(clip(1.2, seed=11), PROMPT, answer_prefix=ANSWER_PREFIX, options=OPTIONS,
                               sampling_rate=16000)


@pytest.fixture(scope="module")
def top(qwen2_audio, item):
    """The clean top-1 token: a random model's P of it is O(0.1), so differences are measurable."""
    with torch.no_grad():
        return int(qwen2_audio(item)[0, -1].argmax())


def probe_positions(inp):
    groups = token_groups(inp)
    return [groups.index("early_prompt"), groups.index("object"), len(groups) - 1]


def brute_force(model, clean, corrupted_inputs, noise, states, cells, answer):
    """P(answer) at the last position for each (layers, positions) cell, one hooked forward per noise draw."""
    names = [get_act_name(states, l) for l in range(model.cfg.n_layers)]
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(clean, names_filter=names)
    draws = [None] if noise is None else list(noise)

    def prob(hooks):
        ps = []
        for draw in draws:
            extra = [] if draw is None else [("hook_audio_embeds", lambda x, hook, d=draw: x + d)]
            with torch.no_grad():
                logits = model.run_with_hooks(corrupted_inputs, fwd_hooks=hooks + extra)
            ps.append(logits[0, -1].softmax(-1)[answer].item())
        return float(np.mean(ps))

    out = []
    for layers, positions in cells:
        def patch(act, hook, positions=positions):
            for p in positions:
                act[0, p] = clean_cache[hook.name][0, p]
            return act

        out.append(prob([(get_act_name(states, l), patch) for l in layers]))
    return prob([]), out


CASES = [  # (mode, states, corruption, window)
    ("tokens", "resid_post", "silence", 1),
    ("tokens", "resid_pre", "noise", 1),
    ("tokens", "mlp_out", "snr", 2),
    ("tokens", "attn_out", "swap", 3),
    ("tokens", "resid_mid", "silence", 1),
    ("layers", "resid_post", "silence", 1),
    ("layers", "attn_out", "noise", 2),
    ("layers", "mlp_out", "silence", 3),
    ("layers", "resid_pre", "snr", 1),
]


@pytest.mark.parametrize("mode, states, corruption, window", CASES)
def test_trace_matches_brute_force(qwen2_audio, item, top, mode, states, corruption, window):
    model = qwen2_audio
    answer = top
    positions = probe_positions(item)
    other = clip(2.0, seed=12)
    value = {"silence": Silence(), "noise": GaussianNoise(n_samples=3, seed=5), "snr": WhiteNoise(snr_db=5.0, seed=5),
             "swap": Swap(other, sampling_rate=16000)}[corruption]
    result = causal_trace(model, item, value, answer=answer, mode=mode, states=states, window=window,
                          positions=positions, engine="reference")
    # Independent construction of the corrupted run.
    noise = None
    if corruption == "noise":
        with torch.no_grad():
            _, c = model.run_with_cache(item, names_filter="hook_audio_embeds")
        sigma = c["hook_audio_embeds"].std().item()
        gen = torch.Generator().manual_seed(5)
        noise = torch.randn((3, *c["hook_audio_embeds"].shape), generator=gen) * 3.0 * sigma
        corrupted = item
    elif corruption == "silence":
        corrupted = model.prepare_like(item, np.zeros_like(item.waveform))
    elif corruption == "snr":
        import torchaudio.functional as AF

        gen = torch.Generator().manual_seed(5)
        w = torch.from_numpy(item.waveform)[None]
        corrupted = model.prepare_like(item, AF.add_noise(w, torch.randn(w.shape[1], generator=gen)[None],
                                                          torch.tensor([5.0]))[0].numpy())
    else:
        corrupted = model.prepare_like(item, other[: len(item.waveform)])
    n = model.cfg.n_layers
    span = lambda l: [k for k in range(n) if l - window // 2 <= k < l + (window + 1) // 2]  # noqa: E731
    if mode == "tokens":
        cells = [(span(l), [p]) for l in range(n) for p in positions]
    else:
        cells = [(span(l), positions) for l in range(n)]
    p_corr, expected = brute_force(model, item, corrupted, noise, states, cells, answer)
    assert abs(result.p_corrupted - p_corr) <= 1e-5
    assert torch.allclose(result.p_patched.flatten(), torch.tensor(expected, dtype=torch.float64), atol=1e-5)
    rr = (result.p_patched - result.p_corrupted) / (result.p_clean - result.p_corrupted)
    assert torch.allclose(result.recovery, rr, equal_nan=True)
    expected_shape = (n, len(positions)) if mode == "tokens" else (n,)
    assert tuple(result.p_patched.shape) == expected_shape


def test_resid_pre_matches_transformer_lens_patching(qwen2_audio, item, top):
    import pandas as pd

    model = qwen2_audio
    positions = probe_positions(item)
    result = causal_trace(model, item, answer=top, states="resid_pre", positions=positions, engine="reference")
    corrupted = model.prepare_like(item, np.zeros_like(item.waveform))
    with torch.no_grad():
        _, clean_cache = model.run_with_cache(item)
        cells = pd.DataFrame([(l, p) for l in range(model.cfg.n_layers) for p in positions], columns=["layer", "pos"])
        answer = top
        tl = patching.get_act_patch_resid_pre(model.with_audio(corrupted), corrupted.input_ids, clean_cache,
                                              lambda logits: logits[0, -1].softmax(-1)[answer],
                                              index_axis_names=None, index_df=cells)
    assert torch.allclose(result.p_patched.flatten().float(), tl.float(), atol=1e-5)


def test_patching_the_clean_state_everywhere_recovers_fully(qwen2_audio, item, top):
    result = causal_trace(qwen2_audio, item, answer=top, mode="layers", states="resid_post", engine="reference",
                          positions=list(range(item.seq_len)))
    assert torch.allclose(result.recovery[-1], torch.tensor(1.0, dtype=torch.float64), atol=1e-4)


def test_noise_is_seeded(qwen2_audio, item, top):
    kw = dict(answer=top, mode="layers", engine="reference")
    a = causal_trace(qwen2_audio, item, GaussianNoise(n_samples=2, seed=1), **kw)
    b = causal_trace(qwen2_audio, item, GaussianNoise(n_samples=2, seed=1), **kw)
    c = causal_trace(qwen2_audio, item, GaussianNoise(n_samples=2, seed=2), **kw)
    assert torch.equal(a.p_patched, b.p_patched) and a.p_corrupted == b.p_corrupted
    assert a.p_corrupted != c.p_corrupted


def test_token_groups(qwen2_audio, item):
    groups = token_groups(item)
    tokens = item.str_tokens[0]
    assert [tokens[i] for i, g in enumerate(groups) if g == "object"] == ["male", ",", "female"]
    assert [i for i, g in enumerate(groups) if g == "audio"] == item.audio_positions[0].tolist()
    assert groups[-1] == "final" and groups.count("final") == 1
    early = [tokens[i] for i, g in enumerate(groups) if g == "early_prompt"]
    assert early[0] == "What" and early[-1] == ":"
    late = [tokens[i] for i, g in enumerate(groups) if g == "late_prompt"]
    assert late[0] == "." and "<|im_end|>" in late and late[-1] == "gender"
    result = causal_trace(qwen2_audio, item, answer="male", mode="layers", engine="reference")
    assert result.positions == [i for i, g in enumerate(groups) if g != "audio"]  # the paper's text tokens
    assert tokens.index("<|im_end|>") in result.special_positions


def test_answer_must_be_one_token(qwen2_audio, item):
    with pytest.raises(ValueError, match=r"'male female' is 2 tokens \['male', 'female'\]"):
        causal_trace(qwen2_audio, item, answer="male female", engine="reference")


def test_positions_and_layers_out_of_range(qwen2_audio, item):
    with pytest.raises(ValueError, match=r"position\(s\) \[999\] outside"):
        causal_trace(qwen2_audio, item, answer="male", positions=[3, 999], engine="reference")
    with pytest.raises(ValueError, match=r"layer\(s\) \[5\] outside"):
        causal_trace(qwen2_audio, item, answer="male", layers=[5], engine="reference")


def test_corrupted_input_with_another_token_count(qwen2_audio, item):
    longer = qwen2_audio.prepare(clip(2.0), PROMPT, answer_prefix=ANSWER_PREFIX, sampling_rate=16000)
    with pytest.raises(ValueError, match="same number of audio tokens"):
        causal_trace(qwen2_audio, item, longer, answer="male", engine="reference")


def test_waveform_corruption_needs_a_prepared_input(qwen2_audio, item):
    with pytest.raises(ValueError, match="PreparedInput"):
        causal_trace(qwen2_audio, dict(item.tensors), answer=qwen2_audio.to_single_token("male"), engine="reference")


def test_result_save_load_dataframe_and_plots(qwen2_audio, item, top, tmp_path):
    from PIL import Image

    from lalm_lens.tracing import plots

    result = causal_trace(qwen2_audio, item, answer=top, positions=probe_positions(item), engine="reference")
    for suffix in (".json", ".npz"):
        loaded = TraceResult.load(result.save(tmp_path / f"r{suffix}"))
        assert torch.allclose(loaded.p_patched, result.p_patched) and loaded.groups == result.groups
        assert loaded.token_labels == result.token_labels and loaded.settings == result.settings
    df = result.to_dataframe()
    assert len(df) == qwen2_audio.cfg.n_layers * 3 and set(df.group) == {"early_prompt", "object", "final"}
    png = plots.save(result.plot(), tmp_path / "heat.png")
    assert Image.open(png).size[0] > 100
    layers = causal_trace(qwen2_audio, item, answer=top, mode="layers", engine="reference")
    assert Image.open(plots.save(layers.plot(), tmp_path / "layers.png")).size[0] > 100
    assert "P(clean)" in result.summary() and "max RR per group" in result.summary()


def test_attention_knockout_matches_renormalised_pattern(qwen2_audio, item):
    result = attention_knockout(qwen2_audio, item, answer="male", queries="final", keys="audio", window=1)
    q, keys = item.seq_len - 1, item.audio_positions[0]
    answer = qwen2_audio.to_single_token("male")
    for layer in range(qwen2_audio.cfg.n_layers):
        def cut(pattern, hook):
            pattern[:, :, q, keys] = 0
            return pattern / pattern.sum(-1, keepdim=True)

        with torch.no_grad():
            logits = qwen2_audio.run_with_hooks(item, fwd_hooks=[(get_act_name("pattern", layer), cut)])
        assert abs(result.p_knocked[layer].item() - logits[0, -1].softmax(-1)[answer].item()) <= 1e-5
    assert result.drop.shape == (qwen2_audio.cfg.n_layers,)
    both = attention_knockout(qwen2_audio, item, answer="male", queries=["object", "final"], window=2)
    assert len(both.query_positions) == 4
    with pytest.raises(ValueError, match="no positions in group 'transcript'"):
        attention_knockout(qwen2_audio, item, answer="male", keys="transcript")


def write_items(folder, n_ok=3):
    folder.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(n_ok):
        soundfile.write(folder / f"c{i}.wav", clip(1.0 + 0.2 * i, seed=20 + i), 16000)
        lines.append(dict(id=f"ok{i}", audio=f"c{i}.wav", question=PROMPT, options=OPTIONS, answer="male",
                          answer_prefix=ANSWER_PREFIX))
    lines.append(dict(id="missing", audio="nope.wav", question=PROMPT, options=OPTIONS, answer="male"))
    path = folder / "items.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


def test_trace_dataset_filters_records_failures_and_resumes(qwen2_audio, tmp_path, monkeypatch):
    items = write_items(tmp_path / "data")
    out = tmp_path / "out" / "records.jsonl"
    result = trace_dataset(qwen2_audio, items, out=out, mode="tokens", filter=None, progress=False, engine="reference",
                           positions=None)
    counts = result.counts()
    assert counts == {"ok": 3, "error": 1}
    error = next(r for r in result.records if r["status"] == "error")
    assert "not found" in error["error"]
    curves = result.group_curves()
    layers, mean, lo, hi = curves["final"]
    assert len(mean) == qwen2_audio.cfg.n_layers and np.all(lo <= mean + 1e-12) and np.all(mean <= hi + 1e-12)
    assert len(out.read_text().splitlines()) == 5  # the settings header, then one line per item
    # A rerun resumes: nothing is traced again.
    import lalm_lens.tracing.dataset as ds

    traced = []
    original = ds.start_item
    monkeypatch.setattr(ds, "start_item", lambda m, spec, item, f: traced.append(item.id) or original(m, spec, item, f))
    again = trace_dataset(qwen2_audio, items, out=out, mode="tokens", filter=None, progress=False)
    assert traced == ["missing"]  # finished items are reused; the failed one is retried
    assert again.records == result.records
    # The paper's filter: a random model's clean top-1 is not the answer, so all are dropped and counted.
    monkeypatch.undo()
    strict = trace_dataset(qwen2_audio, items, mode="layers", progress=False, engine="reference")
    assert strict.counts().get("dropped_clean_wrong", 0) + strict.counts().get("ok", 0) == 3
    summary = json.loads(result.save(tmp_path / "summary.json").read_text())
    assert summary["counts"] == {"ok": 3, "error": 1} and "final" in summary["group_recovery"]


def test_layers_mode_dataset_curve(qwen2_audio, tmp_path):
    items = write_items(tmp_path / "data", n_ok=2)
    result = trace_dataset(qwen2_audio, items, mode="layers", filter=None, progress=False, engine="reference")
    layers, mean, lo, hi = result.layer_curve()
    per_item = np.array([r["recovery"] for r in result.kept])
    assert np.allclose(mean, per_item.mean(0))
    assert "mean RR over 2 kept items" in result.summary()


def test_a_state_whose_flag_is_off_is_refused(qwen2_audio, item, top):
    """`result` needs use_attn_result: without it the hook never fires and every cell would score as the
    corrupted run, so the trace refuses (a declared property of the State, not a branch)."""
    assert not qwen2_audio.cfg.use_attn_result
    with pytest.raises(ValueError, match=r"set_use_attn_result\(True\)"):
        causal_trace(qwen2_audio, item, "silence", answer=top, states="result", layers=[0])
