"""Voxtral Realtime: our hooked model against `VoxtralRealtimeForConditionalGeneration`, through its processor.

The tiny checkpoint's windows (encoder 16 frames, decoder 12 positions) are far
below a 3 s clip's ~360 encoder frames and ~45 positions, so every agreement
below runs across many windows.
"""

import pytest
import torch
from transformers import VoxtralRealtimeForConditionalGeneration

from lalm_lens import HookedLALM
from lalm_lens.families.voxtral_realtime.reference import cropped
from lalm_lens.tracing import GaussianNoise, Silence, causal_trace, token_groups
from tests.tiny_models import assert_bf16_agrees, clip
from tests.tiny_realtime import N_LEFT, STREAMING_PAD, save_realtime

TOL = 1e-4
DELAY = 6
PREFIX = "the sound is"


def max_diff(a, b, valid=None):
    d = (a.float() - b.float()).abs()
    if valid is not None:
        d = d[valid.bool()]
    return d.max().item()


@pytest.fixture(scope="module")
def realtime_dir(tmp_path_factory):
    return save_realtime(tmp_path_factory.mktemp("voxtral_realtime"))


@pytest.fixture(scope="module")
def realtime(realtime_dir):
    return HookedLALM.from_pretrained(realtime_dir, device="cpu")


@pytest.fixture(scope="module")
def realtime_hf(realtime_dir):
    return VoxtralRealtimeForConditionalGeneration.from_pretrained(realtime_dir).eval()


def report(capsys, name, value):
    with capsys.disabled():
        print(f"\n[voxtral_realtime {name}] max |Δ| {value:.2e}")


@torch.no_grad()
def test_prepare_lays_out_audio_and_text_in_time(realtime):
    wave = clip(3.0, seed=1)
    inp = realtime.prepare(wave, answer_prefix=PREFIX, sampling_rate=16000)
    out = realtime.processor(wave, sampling_rate=16000, return_tensors="pt")
    prefill = out["input_ids"].shape[1]
    assert prefill == 1 + N_LEFT + DELAY and int(inp["num_delay_tokens"]) == int(out["num_delay_tokens"]) == DELAY
    assert torch.equal(inp["input_ids"][0, :prefill], out["input_ids"][0])
    assert torch.equal(inp["input_features"], out["input_features"])  # the released processor's own features
    tokens = inp.str_tokens[0]
    assert tokens[0] == "<s>" and set(tokens[1:prefill]) == {"[STREAMING_PAD]"}
    assert "".join(tokens[prefill:]) == PREFIX
    # position p hears audio step p: the clip starts after N_LEFT steps of silence
    assert inp.audio_positions[0].tolist() == list(range(N_LEFT, prefill))
    seconds = inp.meta["position_seconds"][0]
    assert seconds[0].item() == pytest.approx(-N_LEFT * 0.08) and seconds[N_LEFT].item() == 0.0
    assert inp.meta["audio_seconds"][0].tolist() == pytest.approx([0.08 * k for k in range(DELAY + 1)])
    groups = token_groups(inp)
    assert groups[:N_LEFT] == ["template"] * N_LEFT
    assert groups[N_LEFT:prefill] == ["audio"] * (DELAY + 1)
    assert groups[prefill:-1] == ["transcript"] * (inp.seq_len - prefill - 1) and groups[-1] == "final"
    assert inp["input_features"].shape[-1] >= 8 * inp.seq_len  # the whole clip rides along (for decoding)


@torch.no_grad()
def test_logits_and_every_layer_across_windows(realtime, realtime_hf, capsys):
    inp = realtime.prepare(clip(3.0, seed=2), answer_prefix=PREFIX, sampling_rate=16000)
    T = inp.seq_len
    assert T > realtime.cfg.sliding_window and 4 * T > realtime.audio_encoder.cfg.sliding_window
    logits, cache = realtime.run_with_cache(inp)
    layer_outputs = []
    hooks = [l.register_forward_hook(lambda m, a, o: layer_outputs.append(o))
             for l in realtime_hf.model.audio_tower.layers]
    out = realtime_hf(**cropped(inp), output_hidden_states=True)
    for h in hooks:
        h.remove()
    diffs = {"logits": max_diff(logits, out.logits)}
    n = realtime.cfg.n_layers
    for layer in range(n):
        diffs[f"lm{layer}"] = max_diff(cache["resid_pre", layer], out.hidden_states[layer])
    diffs["ln_final"] = max_diff(realtime.ln_final(cache["resid_post", n - 1]), out.hidden_states[n])
    for i, hidden in enumerate(layer_outputs):  # the original ran T steps (4 frames each)
        diffs[f"enc{i}"] = max_diff(cache[f"audio_encoder.blocks.{i}.hook_resid_post"][:, : 4 * T], hidden)
    # the whole clip's stream, as the original's encoder gives it over the full features
    full = realtime_hf.model.get_audio_features(inp["input_features"], return_dict=True).pooler_output
    diffs["audio_stream"] = max_diff(cache["hook_audio_embeds"], full.flatten(0, 1))
    report(capsys, "layers " + ", ".join(f"{k} {v:.1e}" for k, v in diffs.items()), max(diffs.values()))
    assert max(diffs.values()) <= TOL, diffs
    assert logits.abs().max() > 1.0  # the bound is not met by tiny logits
    assert cache["time_embedding.hook_time"].shape == (1, realtime.cfg.d_model)
    assert cache["blocks.0.ln2.hook_ada_scale"].shape == (1, realtime.cfg.d_model)


@torch.no_grad()
def test_padded_batch_of_two_lengths(realtime, realtime_hf, capsys):
    waves = [clip(3.0, seed=3), clip(1.5, seed=4)]
    inp = realtime.prepare(waves, answer_prefix=[PREFIX, "he"], sampling_rate=16000)
    mask = inp["attention_mask"]
    assert (mask[1] == 0).any() and mask[:, 0].all()  # right-padded: position p keeps audio step p
    batch = realtime.processor(waves, sampling_rate=16000, return_tensors="pt")
    assert torch.equal(inp["input_features"], batch["input_features"])  # as the processor pads a batch
    ours = realtime(inp)
    ref = realtime_hf(**cropped(inp)).logits
    delta = max_diff(ours, ref, mask)
    report(capsys, "padded batch", delta)
    assert delta <= TOL
    for row, wave in enumerate(waves):  # and each row as if alone
        alone = realtime.prepare(wave, answer_prefix=[PREFIX, "he"][row], sampling_rate=16000)
        n = alone.seq_len
        assert max_diff(ours[row, :n], realtime(alone)[0]) <= TOL


@torch.no_grad()
def test_generate_equals_hf_greedy(realtime, realtime_hf):
    waves = [clip(2.0, seed=6), clip(1.0, seed=7)]
    inp = realtime.prepare(waves, sampling_rate=16000)
    ours = realtime.generate(inp, max_new_tokens=10, return_type="tokens", eos_token_ids=[])
    ref = realtime_hf.generate(input_ids=inp["input_ids"], attention_mask=inp["attention_mask"],
                               input_features=inp["input_features"], num_delay_tokens=DELAY, max_new_tokens=10,
                               do_sample=False, eos_token_id=None, pad_token_id=11)
    assert ours.shape == (2, 10)
    assert torch.equal(ours, ref[:, inp.seq_len:])


@pytest.mark.parametrize("mode, states, window, corruption", [
    ("tokens", "resid_post", 1, "silence"), ("layers", "mlp_out", 3, "noise")])
def test_fast_engine_equals_reference(realtime, mode, states, window, corruption):
    """Exact with the decoder's sliding window (12 < 45 positions) and the time conditioning."""
    item = realtime.prepare(clip(1.0, seed=31), answer_prefix=PREFIX, sampling_rate=16000)
    with torch.no_grad():
        answer = int(realtime(item)[0, -1].argmax())
    prefill = item.audio_positions[0].max().item() + 1  # a silent pad, an audio pad, the transcript, the final token
    positions = [N_LEFT - 1, N_LEFT + 2, prefill + 1, item.seq_len - 1]
    kw = dict(answer=answer, mode=mode, states=states, window=window, positions=positions,
              corruption={"silence": Silence(), "noise": GaussianNoise(n_samples=2, seed=3)}[corruption])
    ref = causal_trace(realtime, item, engine="reference", **kw)
    fast = causal_trace(realtime, item, engine="fast", **kw)
    assert fast.settings["engine"]["name"] == "fast"
    assert abs(ref.p_corrupted - fast.p_corrupted) <= 1e-5
    assert (ref.p_patched - fast.p_patched).abs().max().item() <= 1e-5
    assert item.seq_len > realtime.cfg.sliding_window


@torch.no_grad()
def test_mutations_move_logits(realtime, realtime_hf, capsys):
    """Each bug the agreement tests must catch: a window off by one, the time embedding of the wrong step."""
    inp = realtime.prepare(clip(1.5, seed=8), answer_prefix=PREFIX, sampling_rate=16000)
    ref = realtime_hf(**cropped(inp)).logits
    assert max_diff(realtime(inp), ref) <= TOL
    moved = {}
    for name, cfg in (("lm_window", realtime.cfg), ("encoder_window", realtime.audio_encoder.cfg)):
        for step in (-1, 1):
            cfg.sliding_window += step
            try:
                moved[f"{name}{step:+d}"] = max_diff(realtime(inp), ref)
            finally:
                cfg.sliding_window -= step
    for step in (DELAY - 1, DELAY + 1):
        moved[f"delay {step}"] = max_diff(realtime(inp, num_delay_tokens=step), ref)
    moved["audio step +1"] = max_diff(realtime(dict(inp, input_features=inp["input_features"][..., 8:])), ref)
    assert max_diff(realtime(inp), ref) <= TOL  # restored
    report(capsys, "mutations " + ", ".join(f"{k} {v:.1e}" for k, v in moved.items()), min(moved.values()))
    assert all(v > TOL for v in moved.values()), moved


def test_bad_input_is_explained(realtime):
    wave = clip(1.0, seed=9)
    with pytest.raises(ValueError, match="takes no prompt"):
        realtime.prepare(wave, "What is said?", sampling_rate=16000)
    with pytest.raises(ValueError, match="needs audio"):
        realtime.prepare(None, answer_prefix=PREFIX)
    with pytest.raises(ValueError, match="no raw prompt, system prompt or options"):
        realtime.prepare(wave, options=["a", "b"], sampling_rate=16000)
    inp = realtime.prepare(wave, sampling_rate=16000)
    with pytest.raises(ValueError, match="one value for the whole batch"):
        realtime(dict(inp, num_delay_tokens=torch.tensor([6, 7])))
    with pytest.raises(ValueError, match="has no audio"):  # more positions than 80 ms steps of audio
        realtime(dict(inp, input_features=inp["input_features"][..., :80]))
    with pytest.raises(ValueError, match="no feature_attention_mask"):
        realtime(dict(inp, feature_attention_mask=torch.ones(1, inp["input_features"].shape[-1])))
    assert all(t == STREAMING_PAD for t in inp["input_ids"][0, 1:].tolist())


def test_verify_passes(realtime_dir):
    import lalm_lens

    report_ = lalm_lens.verify(str(realtime_dir), device="cpu", prompt=None)
    assert report_.passed and len(report_.encoder_layers) == 2, str(report_)


@torch.no_grad()
def test_delay_travels_with_bound_audio(realtime):
    """`with_audio` (for `transformer_lens.patching`) keeps the input's delay, which conditions every layer."""
    inp = realtime.prepare(clip(1.0, seed=10), answer_prefix=PREFIX, sampling_rate=16000)
    bound = realtime.with_audio(dict(inp, num_delay_tokens=torch.tensor(DELAY + 2)))
    assert max_diff(bound(inp["input_ids"]), realtime(inp, num_delay_tokens=DELAY + 2)) == 0.0
    assert max_diff(bound(inp["input_ids"]), realtime(inp)) > TOL


@torch.no_grad()
def test_bfloat16_within_documented_tolerance(realtime_dir, realtime_hf):
    ours = HookedLALM.from_pretrained(realtime_dir, device="cpu", dtype=torch.bfloat16)
    hf = VoxtralRealtimeForConditionalGeneration.from_pretrained(realtime_dir, dtype=torch.bfloat16).eval()
    inp = ours.prepare(clip(1.5, seed=11), answer_prefix=PREFIX, sampling_rate=16000)
    ref = cropped(inp)
    a = ours(inp)
    b = hf(**dict(ref, input_features=ref["input_features"].to(torch.bfloat16))).logits
    assert_bf16_agrees(a, b, realtime_hf(**ref).logits)
