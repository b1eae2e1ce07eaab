"""Audio Flamingo 3: our hooked model against `AudioFlamingo3ForConditionalGeneration`, float32 and bfloat16.

Every case compares the logits, the output of every encoder block (valid frames of
each 30 s window), the encoder output, the audio vectors and every LM layer.
"""

import warnings

import numpy as np
import pytest
import torch
from transformers import AudioFlamingo3ForConditionalGeneration

import lalm_lens
from lalm_lens import HookedLALM
from lalm_lens.families import family_for
from lalm_lens.families.audio_flamingo3 import AUDIO_FLAMINGO3
from lalm_lens.families.audio_flamingo3.reference import original_inputs
from tests.tiny_af3 import AUDIO_TOKEN_ID
from tests.tiny_models import ANSWER_PREFIX, PROMPT, assert_bf16_agrees, clip

TOL = 1e-4
RATE = 16000


@pytest.fixture(scope="module")
def folder(audio_flamingo3_dir):
    return audio_flamingo3_dir


@pytest.fixture(scope="module")
def ours(audio_flamingo3):
    return audio_flamingo3


@pytest.fixture(scope="module")
def hf(folder):
    return AudioFlamingo3ForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()


def max_diff(a, b, valid=None):
    d = (a.float() - b.float()).abs()
    return (d[valid.bool()] if valid is not None else d).max().item()


@torch.no_grad()
def compare(ours, hf, inp, label):
    """Max |Δ| of logits, LM layers, encoder blocks, encoder output and audio vectors (valid positions)."""
    tower = hf.model.audio_tower
    layer_out, tower_out = [], []
    handles = [layer.register_forward_hook(lambda m, a, o: layer_out.append(o[0] if isinstance(o, tuple) else o))
               for layer in tower.layers]
    handles.append(tower.register_forward_hook(lambda m, a, o: tower_out.append(o.last_hidden_state)))
    try:
        out = hf(**original_inputs(inp), output_hidden_states=True)
    finally:
        for h in handles:
            h.remove()
    logits, cache = ours.run_with_cache(inp)
    valid = inp["attention_mask"]
    n = ours.cfg.n_layers
    diffs = {"logits": max_diff(logits, out.logits, valid)}
    # HF: [embeddings, output of layer 0, ..., output of layer n-2, final-normed output]
    for layer in range(n):
        diffs[f"lm{layer}"] = max_diff(cache[f"blocks.{layer}.hook_resid_pre"], out.hidden_states[layer], valid)
    diffs["lm_final"] = max_diff(ours.ln_final(cache[f"blocks.{n - 1}.hook_resid_post"]), out.hidden_states[n], valid)
    if "input_features" in inp:
        frames = inp["feature_attention_mask"].sum(-1)
        conv_valid = (frames - 1) // 2 + 1
        pooled_valid = (conv_valid - 2) // 2 + 1
        assert len(layer_out) == ours.config.encoder.n_layers

        def on_valid(a, b, lengths):  # window by window: ours crops the padded frames, HF keeps 1500
            return max(max_diff(a[w, :v], b[w, :v]) for w, v in enumerate(lengths.tolist()) if v > 0)

        for i, hidden in enumerate(layer_out):
            diffs[f"enc{i}"] = on_valid(cache[f"audio_encoder.blocks.{i}.hook_resid_post"], hidden, conv_valid)
        diffs["enc_out"] = on_valid(cache["audio_encoder.hook_out"], tower_out[0], pooled_valid)
        diffs["audio_embeds"] = max_diff(cache["hook_audio_embeds"], out.audio_hidden_states)
        features = hf.model.get_audio_features(inp["input_features"], inp["feature_attention_mask"]).pooler_output
        diffs["audio_embeds"] = max(diffs["audio_embeds"], max_diff(cache["hook_audio_embeds"], features))
    print(f"\n{label}: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    assert max(diffs.values()) <= TOL, diffs
    return diffs


def test_family_and_config(folder, ours):
    assert family_for("audioflamingo3") is AUDIO_FLAMINGO3
    assert ours.family is AUDIO_FLAMINGO3 and ours.config.family == "audio_flamingo3"
    assert ours.config.audio_token_id == AUDIO_TOKEN_ID == ours.processor.audio_token_id
    assert ours.config.max_audio_seconds == 600 and ours.config.encoder.kind == "padded"
    assert ours.config.projector.kind == "mlp" and not ours.cfg.tie_word_embeddings
    assert ours.cfg.rotary_base == 1e6 and ours.cfg.n_key_value_heads == 2


def test_one_clip(ours, hf):
    inp = ours.prepare(clip(3.0), PROMPT, answer_prefix=ANSWER_PREFIX, sampling_rate=RATE)
    assert inp["feature_attention_mask"].sum().item() == 300
    assert (inp["input_ids"] == AUDIO_TOKEN_ID).sum().item() == 75
    compare(ours, hf, inp, "3 s clip")


@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_batch_of_two_lengths(ours, hf, side):
    ours.tokenizer.padding_side = side
    try:
        inp = ours.prepare([clip(2.0, seed=1), clip(4.5, seed=2)], [PROMPT, "Describe the audio ."], sampling_rate=RATE)
    finally:
        ours.tokenizer.padding_side = "right"
    assert (inp["attention_mask"] == 0).any(), "the batch must contain padding"
    assert inp["feature_attention_mask"].sum(-1).tolist() == [200, 450]
    compare(ours, hf, inp, f"batch 2 s + 4.5 s, {side} padding")


def test_text_only(ours, hf):
    inp = ours.prepare(None, PROMPT, answer_prefix=ANSWER_PREFIX)
    assert "input_features" not in inp
    compare(ours, hf, inp, "text only")


def test_audio_longer_than_one_window(ours, hf):
    inp = ours.prepare(clip(40.0, seed=3), PROMPT, sampling_rate=RATE)
    assert inp["input_features"].shape == (2, 128, 3000)
    assert inp["feature_attention_mask"].sum(-1).tolist() == [3000, 1000]
    assert (inp["input_ids"] == AUDIO_TOKEN_ID).sum().item() == 1000 == len(inp.audio_positions[0])
    times = inp.meta["audio_seconds"][0]
    assert len(times) == 1000 and times[0] == 0 and torch.allclose(times.diff(), torch.tensor(0.04, dtype=times.dtype))
    assert abs(times[750].item() - 30.0) < 1e-9  # the second window's first token starts at 30 s
    compare(ours, hf, inp, "40 s clip (two windows)")


def test_audio_tokens_match_the_processor(ours):
    """`audio_tokens` and the rows agree with `AudioFlamingo3Processor` at window edges."""
    proc, builder = ours.processor, ours.prompts
    for n in (321, 48000, 48020, 480000, 480001, 480160, 480321, 640000, 960000, 975000):
        out = proc(text=["<sound>"], audio=[np.zeros(n, dtype=np.float32)])
        expected = int((out["input_ids"] == AUDIO_TOKEN_ID).sum())
        assert builder.audio_tokens(n) == expected == len(builder.token_times(n)), n
    assert builder.audio_tokens(320) == 0  # too short for one token: prepare refuses it


def test_audio_beyond_600_s_is_cut_with_a_warning(ours):
    with pytest.warns(UserWarning, match="at most 600 s"):
        inp = ours.prepare(np.zeros(601 * RATE, dtype=np.float32) + 0.01, "Describe the audio .", sampling_rate=RATE)
    assert inp["input_features"].shape[0] == 20 and (inp["input_ids"] == AUDIO_TOKEN_ID).sum().item() == 15000
    assert inp.meta["audio_seconds"][0][-1].item() == pytest.approx(599.96)


@torch.no_grad()
def test_generate_equals_hf_greedy(ours, hf):
    ours.tokenizer.padding_side = "left"  # as AudioFlamingo3Processor pads a batch
    try:
        inp = ours.prepare([clip(2.0, seed=5), clip(3.5, seed=6)], [PROMPT, "Describe the audio ."],
                           sampling_rate=RATE)
    finally:
        ours.tokenizer.padding_side = "right"
    mine = ours.generate(inp, max_new_tokens=8, return_type="tokens", eos_token_ids=[])
    ref = hf.generate(**original_inputs(inp), max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(mine, ref[:, inp["input_ids"].shape[1]:])


@torch.no_grad()
def test_bfloat16(folder, hf):
    ours16 = HookedLALM.from_pretrained(folder, device="cpu", dtype=torch.bfloat16)
    hf16 = AudioFlamingo3ForConditionalGeneration.from_pretrained(folder, dtype=torch.bfloat16).eval()
    inp = ours16.prepare(clip(3.0), PROMPT, answer_prefix=ANSWER_PREFIX, sampling_rate=RATE)
    a, b = ours16(inp), hf16(**original_inputs(inp, torch.bfloat16)).logits
    assert a.dtype == torch.bfloat16
    rel = assert_bf16_agrees(a, b, hf(**original_inputs(inp)).logits)
    print(f"\nbfloat16: max |Δ| vs float32 original / max |logits| = {rel:.3e}")


def test_token_groups(ours):
    from lalm_lens.tracing import token_groups

    item = ours.prepare(clip(1.2, seed=11), PROMPT, answer_prefix=ANSWER_PREFIX, options=["male", "female"],
                        sampling_rate=RATE)
    groups, tokens = token_groups(item), item.str_tokens[0]
    assert [tokens[i] for i, g in enumerate(groups) if g == "object"] == ["male", ",", "female"]
    assert [i for i, g in enumerate(groups) if g == "audio"] == item.audio_positions[0].tolist()
    assert groups[-1] == "final" and groups.count("final") == 1
    early = [tokens[i] for i, g in enumerate(groups) if g == "early_prompt"]
    assert early[0] == "What" and early[-1] == ":"
    late = [tokens[i] for i, g in enumerate(groups) if g == "late_prompt"]
    assert late[0] == "." and "<|im_end|>" in late and late[-1] == "gender"
    template = [tokens[i] for i, g in enumerate(groups) if g == "template"]
    assert template[:2] == ["<|im_start|>", "system"] and template[-1] == "user"


@torch.no_grad()
def test_audio_bound_view_keeps_the_frame_mask(ours):
    """Token-only tools see the mask under the house's name, so the encoder still masks padding."""
    from lalm_lens.audio_bound import AudioBoundModel

    inp = ours.prepare(clip(2.5, seed=4), PROMPT, sampling_rate=RATE)
    assert torch.equal(AudioBoundModel(ours, inp)(inp["input_ids"]), ours(inp))
    processor_names = {("input_features_mask" if k == "feature_attention_mask" else k): v for k, v in inp.items()}
    assert torch.equal(ours(processor_names), ours(inp))  # the processor's own output works too


@torch.no_grad()
def test_in_memory_key_layout(folder, ours, hf, tmp_path):
    """A checkpoint in transformers-5's in-memory layout (`model.audio_tower.*`, `lm_head.*`) loads the same."""
    import shutil

    from safetensors.torch import save_file

    for f in folder.iterdir():
        if f.name != "model.safetensors":
            shutil.copy(f, tmp_path / f.name)
    state = hf.state_dict()
    assert "model.audio_tower.conv1.weight" in state and "lm_head.weight" in state
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "model.safetensors")
    other = HookedLALM.from_pretrained(tmp_path, device="cpu")
    for name, p in ours.state_dict().items():
        assert torch.equal(p, other.state_dict()[name]), name


def test_verify_and_cli(folder):
    from lalm_lens.cli import main

    report = lalm_lens.verify(str(folder), device="cpu")
    print(f"\n{report}")
    assert report.passed and report.audio_embeds_diff is not None and report.audio_embeds_diff <= TOL
    assert len(report.encoder_layers) == 2 and max(report.encoder_layers + report.lm_layers) <= TOL
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(["verify", str(folder), "--device", "cpu"]) == 0
