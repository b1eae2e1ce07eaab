"""Music Flamingo: our hooked model against `MusicFlamingoForConditionalGeneration`, float32.

Every case compares the logits, each encoder block's output (valid frames of each
30 s window), the encoder output, the rotary-time-rotated vectors (the projector's
input in the original), the audio vectors and every LM layer.
"""

import numpy as np
import pytest
import torch
from transformers import MusicFlamingoForConditionalGeneration

from lalm_lens import HookedLALM
from lalm_lens.families import family_for
from lalm_lens.families.audio_flamingo3.reference import original_inputs
from lalm_lens.families.music_flamingo import MUSIC_FLAMINGO
from lalm_lens.tracing import GaussianNoise, Silence, WhiteNoise, causal_trace, token_groups
from tests.tiny_models import ANSWER_PREFIX, PROMPT, clip
from tests.tiny_music_flamingo import AUDIO_TOKEN_ID, save_music_flamingo

# random tiny models: some traces are ill-posed on purpose (recovery rates compared, not read)
pytestmark = pytest.mark.filterwarnings("ignore::lalm_lens.tracing.IllPosedTraceWarning")

TOL = 1e-4
RATE = 16000


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_music_flamingo(tmp_path_factory.mktemp("music_flamingo"))


@pytest.fixture(scope="module")
def ours(folder):
    return HookedLALM.from_pretrained(folder, device="cpu")


@pytest.fixture(scope="module")
def hf(folder):
    return MusicFlamingoForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()


def max_diff(a, b, valid=None):
    d = (a.float() - b.float()).abs()
    return (d[valid.bool()] if valid is not None else d).max().item()


@torch.no_grad()
def original_run(hf, inp):
    """The original's output, with its encoder blocks, encoder output and projector input captured."""
    seen = {"layers": [], "tower": [], "rotated": []}
    tower = hf.model.audio_tower
    handles = [layer.register_forward_hook(lambda m, a, o: seen["layers"].append(o[0] if isinstance(o, tuple) else o))
               for layer in tower.layers]
    handles.append(tower.register_forward_hook(lambda m, a, o: seen["tower"].append(o.last_hidden_state)))
    handles.append(hf.model.multi_modal_projector.register_forward_hook(lambda m, a, o: seen["rotated"].append(a[0])))
    try:
        out = hf(**original_inputs(inp), output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    return out, seen


@torch.no_grad()
def compare(ours, hf, inp, label):
    """Max |Δ| of logits, LM layers, encoder blocks, encoder output, rotated vectors and audio vectors."""
    out, seen = original_run(hf, inp)
    logits, cache = ours.run_with_cache(inp)
    valid, n = inp["attention_mask"], ours.cfg.n_layers
    diffs = {"logits": max_diff(logits, out.logits, valid)}
    for layer in range(n):  # HF: [embeddings, output of layer 0, ..., output of layer n-2, final-normed output]
        diffs[f"lm{layer}"] = max_diff(cache[f"blocks.{layer}.hook_resid_pre"], out.hidden_states[layer], valid)
    diffs["lm_final"] = max_diff(ours.ln_final(cache[f"blocks.{n - 1}.hook_resid_post"]), out.hidden_states[n], valid)
    if "input_features" in inp:
        conv_valid = (inp["feature_attention_mask"].sum(-1) - 1) // 2 + 1
        pooled_valid = (conv_valid - 2) // 2 + 1

        def on_valid(a, b, lengths):  # window by window: ours crops the padded frames, HF keeps 1500
            return max(max_diff(a[w, :v], b[w, :v]) for w, v in enumerate(lengths.tolist()) if v > 0)

        assert len(seen["layers"]) == ours.config.encoder.n_layers
        for i, hidden in enumerate(seen["layers"]):
            diffs[f"enc{i}"] = on_valid(cache[f"audio_encoder.blocks.{i}.hook_resid_post"], hidden, conv_valid)
        diffs["enc_out"] = on_valid(cache["audio_encoder.hook_out"], seen["tower"][0], pooled_valid)
        diffs["rotary_time"] = on_valid(cache["audio_projector.rotary_time.hook_out"], seen["rotated"][0], pooled_valid)
        diffs["audio_embeds"] = max_diff(cache["hook_audio_embeds"], out.audio_hidden_states)
    print(f"\n{label}: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    assert max(diffs.values()) <= TOL, diffs
    return diffs


def test_family_and_config(ours):
    assert family_for("musicflamingo") is MUSIC_FLAMINGO
    assert ours.family is MUSIC_FLAMINGO and ours.config.family == "music_flamingo"
    assert ours.config.audio_token_id == AUDIO_TOKEN_ID == ours.processor.audio_token_id
    assert ours.config.max_audio_seconds == 1200 == ours.processor.max_audio_len  # 40 windows, then cut
    assert ours.config.encoder.kind == "padded"
    p = ours.config.projector
    assert p.kind == "rotary_time_mlp" and p.extra["window_tokens"] == 750
    assert p.extra["rope_theta"] == p.extra["n_cached"] == 1200.0 and p.extra["rot_fraction"] == 0.2
    assert ours.audio_projector.rotary_time.rot_dim == 12  # 0.2 x the encoder width 64


def test_one_clip(ours, hf):
    inp = ours.prepare(clip(3.0), PROMPT, answer_prefix=ANSWER_PREFIX, sampling_rate=RATE)
    assert (inp["input_ids"] == AUDIO_TOKEN_ID).sum().item() == 75
    compare(ours, hf, inp, "3 s clip")


@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_batch_of_two_lengths(ours, hf, side):
    before, ours.tokenizer.padding_side = ours.tokenizer.padding_side, side
    try:
        inp = ours.prepare([clip(2.0, seed=1), clip(4.5, seed=2)], [PROMPT, "Describe the audio ."], sampling_rate=RATE)
    finally:
        ours.tokenizer.padding_side = before
    assert (inp["attention_mask"] == 0).any(), "the batch must contain padding"
    assert inp["feature_attention_mask"].sum(-1).tolist() == [200, 450]
    compare(ours, hf, inp, f"batch 2 s + 4.5 s, {side} padding")


def test_text_only(ours, hf):
    compare(ours, hf, ours.prepare(None, PROMPT, answer_prefix=ANSWER_PREFIX), "text only")


def test_clips_longer_than_one_window(ours, hf):
    """A batch of a 31 s and a 40 s clip (two windows each, padded rows): the window index restarts at
    each clip, and the second window's vectors are rotated as 30 s and later."""
    from lalm_lens.components.rotary_time import window_index

    inp = ours.prepare([clip(31.0, seed=7), clip(40.0, seed=8)], [PROMPT, "Describe the audio ."], sampling_rate=RATE)
    assert inp["input_features"].shape == (4, 128, 3000)
    assert inp["feature_attention_mask"].sum(-1).tolist() == [3000, 100, 3000, 1000]
    assert [len(p) for p in inp.audio_positions] == [775, 1000]
    lengths = ours.audio_encoder.output_lengths(inp["feature_attention_mask"].sum(-1))[1]
    assert window_index(inp["input_ids"], AUDIO_TOKEN_ID, lengths).tolist() == [0, 1, 0, 1]
    compare(ours, hf, inp, "batch 31 s + 40 s (four windows)")


def test_token_groups_and_times(ours):
    item = ours.prepare(clip(31.0, seed=11), PROMPT, answer_prefix=ANSWER_PREFIX, options=["male", "female"],
                        sampling_rate=RATE)
    groups, tokens = token_groups(item), item.str_tokens[0]
    audio = item.audio_positions[0].tolist()
    assert [i for i, g in enumerate(groups) if g == "audio"] == audio and len(audio) == 775
    assert tokens[audio[0] - 1] == "<|sound_bos|>" and tokens[audio[-1] + 1] == "<|sound_eos|>"
    assert groups[audio[0] - 1] == groups[audio[-1] + 1] == "template"
    assert [tokens[i] for i, g in enumerate(groups) if g == "object"] == ["male", ",", "female"]
    assert groups[-1] == "final" and groups.count("final") == 1
    times = item.meta["audio_seconds"][0]
    assert len(times) == 775 and times[0] == 0 and torch.allclose(times.diff(), torch.tensor(0.04, dtype=times.dtype))
    assert abs(times[750].item() - 30.0) < 1e-9  # the second window's first vector: the rotary time's 30 s too
    assert ours.audio_projector.rotary_time.times(torch.tensor([1]), 1).item() == pytest.approx(30.0)


def test_audio_tokens_match_the_processor(ours):
    proc, builder = ours.processor, ours.prompts
    for n in (321, 48000, 480000, 480001, 480321, 960000, 975000):
        out = proc(text=["<sound>"], audio=[np.zeros(n, dtype=np.float32)])
        expected = int((out["input_ids"] == AUDIO_TOKEN_ID).sum())
        assert builder.audio_tokens(n) == expected == len(builder.token_times(n)), n


@torch.no_grad()
def test_generate_equals_hf_greedy(ours, hf):
    inp = ours.prepare([clip(2.0, seed=5), clip(3.5, seed=6)], [PROMPT, "Describe the audio ."], sampling_rate=RATE)
    mine = ours.generate(inp, max_new_tokens=8, return_type="tokens", eos_token_ids=[])
    ref = hf.generate(**original_inputs(inp), max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(mine, ref[:, inp["input_ids"].shape[1]:])


@torch.no_grad()
def test_rotary_time_disabled_moves_logits(ours, hf, monkeypatch):
    """Mutations: no rotary time (time zero everywhere), or every window taken as its clip's first."""
    import lalm_lens.components.projectors as projectors

    inp = ours.prepare(clip(31.0, seed=61), PROMPT, answer_prefix=ANSWER_PREFIX, sampling_rate=RATE)
    ref = original_run(hf, inp)[0].logits
    clean = (ours(inp) - ref).abs().max().item()
    moved = {"no_rotary_time": ours.run_with_hooks(
        inp, fwd_hooks=[("audio_projector.rotary_time.hook_time", lambda t, hook: t * 0)])}
    true_index = projectors.window_index
    monkeypatch.setattr(projectors, "window_index", lambda *a: torch.zeros_like(true_index(*a)))
    moved["window_index_0"] = ours(inp)
    monkeypatch.undo()
    moved = {k: (v - ref).abs().max().item() for k, v in moved.items()}
    print(f"\n[mutations music_flamingo] unmutated {clean:.1e}; " + ", ".join(f"{k} {v:.1e}" for k, v in moved.items()))
    assert clean <= TOL and all(v > TOL for v in moved.values()), moved
    assert (ours(inp) - ref).abs().max().item() <= TOL  # restored


def test_encode_audio_without_input_ids_is_refused(ours):
    inp = ours.prepare(clip(1.0), PROMPT, sampling_rate=RATE)
    with pytest.raises(ValueError, match="pass input_ids"):
        ours.encode_audio(inp["input_features"], inp["feature_attention_mask"])
    with pytest.raises(ValueError, match="audio tokens but the audio gives"):
        ours.encode_audio(inp["input_features"], inp["feature_attention_mask"], inp["input_ids"][:, :-3][:, :20])


CORRUPTIONS = {"silence": Silence(), "noise": GaussianNoise(n_samples=2, seed=3), "snr": WhiteNoise(snr_db=3.0, seed=3)}


def traced_item(ours, seconds):
    item = ours.prepare(clip(seconds, seed=31), PROMPT, answer_prefix=ANSWER_PREFIX, options=["male", "female"],
                        sampling_rate=RATE)
    with torch.no_grad():
        answer = int(ours(item)[0, -1].argmax())
    groups = token_groups(item)
    return item, answer, [groups.index("early_prompt"), groups.index("object") + 1, len(groups) - 1]


def assert_engines_agree(ours, item, **kw):
    ref = causal_trace(ours, item, engine="reference", **kw)
    fast = causal_trace(ours, item, engine="fast", **kw)
    assert fast.settings["engine"]["name"] == "fast"
    assert abs(ref.p_corrupted - fast.p_corrupted) <= 1e-5
    assert (ref.p_patched - fast.p_patched).abs().max().item() <= 1e-5
    return ref


@pytest.mark.parametrize("mode, states", [("tokens", "resid_pre"), ("layers", "mlp_out"), ("tokens", "z")])
def test_fast_engine_equals_reference(ours, mode, states):
    item, answer, positions = traced_item(ours, 1.2)
    for corruption in CORRUPTIONS.values():
        assert_engines_agree(ours, item, answer=answer, mode=mode, states=states, window=2, corruption=corruption,
                             positions=positions)


@pytest.mark.filterwarnings("ignore::UserWarning")  # a tiny random model: the trace may be ill-posed
def test_corruptions_of_a_clip_longer_than_one_window(ours):
    """Every corruption on a 31 s clip (two windows); Gaussian noise encodes the clean audio, which needs the
    input ids (each window's place in its clip). The fast engine gives the reference engine's numbers."""
    item, answer, positions = traced_item(ours, 31.0)
    for name, corruption in CORRUPTIONS.items():
        run = corruption.apply(ours, item)
        assert torch.equal(run.inputs["input_ids"], item["input_ids"]), name  # the same positions
        if name == "noise":
            assert run.noise.shape == (2, 775, ours.cfg.d_model)
            ref = assert_engines_agree(ours, item, answer=answer, mode="tokens", states="resid_pre", window=1,
                                       corruption=corruption, positions=positions[-1:])
            assert ref.p_clean != ref.p_corrupted
        else:
            assert not torch.equal(run.inputs["input_features"], item["input_features"]), name


def test_rotary_time_at_the_released_size_over_1200_s():
    """The released config's rotary time (256 + 256 of 1280 channels, 1200 cached positions) against the
    original's `MusicFlamingoRotaryEmbedding` for all 40 windows of a 20-minute clip: angles reach ~1e4 rad."""
    from transformers import MusicFlamingoConfig
    from transformers.models.musicflamingo.modeling_musicflamingo import (MusicFlamingoRotaryEmbedding,
                                                                         apply_rotary_time_emb)

    from lalm_lens.components.rotary_time import RotaryTimeEmbedding
    from tests import real_configs as rc
    from weight_conversion.music_flamingo import convert_config

    hf_config = MusicFlamingoConfig(**rc.MUSIC_FLAMINGO)
    e = convert_config(hf_config).projector.extra
    mine = RotaryTimeEmbedding(1280, e["rope_theta"], e["rot_fraction"], e["n_cached"], e["step"], e["window_tokens"])
    theirs = MusicFlamingoRotaryEmbedding(hf_config)
    windows = torch.arange(40)
    time = mine.times(windows, 750)
    cos, sin = theirs(time, seq_len=750)
    angles = mine.angles(time)
    assert angles.shape == cos.shape == (40, 750, 512) and angles.abs().max() > 1e4
    assert torch.equal(angles.cos(), cos) and torch.equal(angles.sin(), sin)
    x = torch.randn(40, 750, 1280)
    assert torch.equal(mine(x, windows), apply_rotary_time_emb(x, cos, sin))


def test_lm_mask_rule_builds_no_int64_table():
    """`allowed_keys` (causal, sliding window) equals the difference rule, as one bool table."""
    from lalm_lens.components.masks import allowed_keys

    for start in (0, 5):
        q, k = torch.arange(start, start + 9), torch.cat([torch.arange(3), torch.arange(start, start + 9)])
        delta = q[:, None] - k[None, :]
        for window in (None, 1, 4):
            got = allowed_keys(q, k, causal=True, sliding_window=window)
            assert got.dtype == torch.bool
            assert torch.equal(got, (delta >= 0) & (delta < (window or 10**9)))
        assert torch.equal(allowed_keys(q, k, causal=False, sliding_window=4), delta.abs().lt(10**9) & (delta < 4))
    assert allowed_keys(q, k, causal=False) is None


def test_verify(folder):
    import lalm_lens

    report = lalm_lens.verify(str(folder), device="cpu")
    assert report.passed and report.audio_embeds_diff <= TOL and len(report.encoder_layers) == 2
    assert max(report.encoder_layers + report.lm_layers) <= TOL
