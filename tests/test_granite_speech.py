"""Granite Speech: our hooked model against `GraniteSpeechForConditionalGeneration` (+ its peft LoRA), float32.

Every agreement case compares the logits, every conformer block's output, the encoder
output, the audio vectors and every LM layer. The tiny model's conformer attends in blocks
of 8 frames (0.16 s) and its projector reads windows of 15 frames (0.3 s), so every clip
here spans several of both, with a partial last one.
"""

import math

import numpy as np
import pytest
import torch

from lalm_lens import HookedLALM
from lalm_lens.families import family_for
from lalm_lens.families.granite_speech import GRANITE_SPEECH, GraniteSpeechLALM
from lalm_lens.families.granite_speech.reference import load as load_reference
from lalm_lens.families.granite_speech.reference import forward as reference_forward
from lalm_lens.families.granite_speech.reference import original_inputs, set_adapter
from lalm_lens.hub import resolve_checkpoint
from tests.tiny_granite import AUDIO_TOKEN_ID, CONTEXT_SIZE, save_granite
from tests.tiny_models import ANSWER_PREFIX, PROMPT, clip

TOL = 1e-4
RATE = 16000


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save_granite(tmp_path_factory.mktemp("granite_speech"))


@pytest.fixture(scope="module")
def ours(folder):
    return HookedLALM.from_pretrained(folder, device="cpu")


@pytest.fixture(scope="module")
def hf(folder):
    return load_reference(resolve_checkpoint(folder), None, torch.float32, "cpu")


def max_diff(a, b, valid=None):
    d = (a.float() - b.float()).abs()
    return (d[valid.bool()] if valid is not None else d).max().item()


@torch.no_grad()
def compare(ours, hf, inp, label):
    """Max |Δ| of logits, LM layers, conformer blocks, encoder output and audio vectors."""
    layer_out, enc_out = [], []
    # clone: the original adds the CTC feedback in place to the middle block's output
    handles = [layer.register_forward_hook(lambda m, a, o: layer_out.append(o.clone())) for layer in hf.model.encoder.layers]
    handles.append(hf.model.encoder.register_forward_hook(lambda m, a, o: enc_out.append(o.last_hidden_state)))
    try:
        out = reference_forward(hf, inp)
    finally:
        for h in handles:
            h.remove()
    logits, cache = ours.run_with_cache(inp)
    valid = inp["attention_mask"]
    n = ours.cfg.n_layers
    diffs = {"logits": max_diff(logits, out.logits, valid)}
    for layer in range(n):
        diffs[f"lm{layer}"] = max_diff(cache[f"blocks.{layer}.hook_resid_pre"], out.hidden_states[layer], valid)
    diffs["lm_final"] = max_diff(ours.ln_final(cache[f"blocks.{n - 1}.hook_resid_post"]), out.hidden_states[n], valid)
    if "input_features" in inp:
        assert len(layer_out) == ours.config.encoder.n_layers
        for i, hidden in enumerate(layer_out):
            diffs[f"enc{i}"] = max_diff(cache[f"audio_encoder.blocks.{i}.hook_resid_post"], hidden)
        diffs["enc_out"] = max_diff(cache["audio_encoder.hook_out"], enc_out[0])
        diffs["audio_embeds"] = max_diff(cache["hook_audio_embeds"], out.audio_embeds)  # scaled, each clip's own
    print(f"\n{label}: " + ", ".join(f"{k} {v:.2e}" for k, v in diffs.items()))
    assert max(diffs.values()) <= TOL, diffs
    return diffs


def test_family_and_config(ours):
    assert family_for("granite_speech") is GRANITE_SPEECH and isinstance(ours, GraniteSpeechLALM)
    assert ours.config.audio_token_id == AUDIO_TOKEN_ID and ours.config.encoder.kind == "conformer"
    assert ours.config.encoder.context_size == CONTEXT_SIZE and ours.config.projector.kind == "window_qformer"
    assert ours.cfg.lora == dict(rank=4, scale=2.0, targets=["q", "v"]) and ours.cfg.tie_word_embeddings
    assert (ours.cfg.embedding_multiplier, ours.cfg.residual_multiplier, ours.cfg.attention_multiplier,
            ours.cfg.logits_scaling) == (3.0, 0.5, 0.2, 2.0)
    names = set(ours.hook_dict)
    for part in ("ff1", "attn", "conv", "ff2"):
        assert f"audio_encoder.blocks.1.hook_{part}_out" in names
    assert {"audio_encoder.blocks.0.attn.hook_pos_scores", "audio_encoder.blocks.0.conv.hook_depthwise",
            "audio_encoder.hook_ctc_logits", "blocks.1.attn.lora_q.hook_out", "blocks.0.attn.lora_v.hook_down",
            "audio_projector.layers.1.hook_cross_out"} <= names


def test_one_clip_spanning_attention_blocks_and_windows(ours, hf):
    inp = ours.prepare(clip(1.37), PROMPT, answer_prefix=ANSWER_PREFIX, sampling_rate=RATE)
    frames = inp["input_features"].shape[1]
    assert frames == 69 and frames % CONTEXT_SIZE and frames % 15  # 9 attention blocks, 5 windows, both partial
    assert (inp["input_ids"] == AUDIO_TOKEN_ID).sum().item() == math.ceil(69 / 15) * 3 == 15
    compare(ours, hf, inp, "1.37 s clip")


@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_batch_of_two_lengths(ours, hf, side):
    ours.tokenizer.padding_side = side
    try:
        inp = ours.prepare([clip(0.7, seed=1), clip(1.6, seed=2)], [PROMPT, "Describe the audio ."], sampling_rate=RATE)
    finally:
        ours.tokenizer.padding_side = "right"
    assert (inp["attention_mask"] == 0).any(), "the batch must contain padding"
    assert inp["feature_attention_mask"].sum(-1).tolist() == [9, 18]
    compare(ours, hf, inp, f"batch 0.7 s + 1.6 s, {side} padding")


def test_text_only_runs_without_the_adapter(ours, hf):
    inp = ours.prepare(None, PROMPT, answer_prefix=ANSWER_PREFIX)
    compare(ours, hf, inp, "text only")
    assert not ours.lora_active


def test_prepare_equals_the_processor(ours):
    """Rows, features and mask as `GraniteSpeechProcessor` gives them for the same text (a batch computed together)."""
    waves = [clip(0.9, seed=4), clip(1.3, seed=5)]
    inp = ours.prepare(waves, [PROMPT, PROMPT], sampling_rate=RATE)
    out = ours.processor(text=inp.texts, audio=waves, return_tensors="pt")
    assert torch.equal(inp["input_ids"], out["input_ids"]) and torch.equal(inp["input_features"], out["input_features"])
    assert torch.equal(inp["feature_attention_mask"], out["input_features_mask"])
    assert "<|audio|>" in inp.texts[0] and inp.texts[0].index("<|audio|>") < inp.texts[0].index("What")
    for n in (480, 4799, 4800, 16000, 16161, 48000):
        got = ours.processor(text=["<|audio|>"], audio=[np.zeros(n, dtype=np.float32)], return_tensors="pt")
        assert ours.prompts.audio_tokens(n) == int((got["input_ids"] == AUDIO_TOKEN_ID).sum()), n


def test_token_groups_and_times(ours):
    from lalm_lens.tracing import token_groups

    item = ours.prepare(clip(1.2, seed=11), PROMPT, answer_prefix=ANSWER_PREFIX, options=["male", "female"],
                        sampling_rate=RATE)
    groups, tokens = token_groups(item), item.str_tokens[0]
    assert [tokens[i] for i, g in enumerate(groups) if g == "object"] == ["male", ",", "female"]
    assert [i for i, g in enumerate(groups) if g == "audio"] == item.audio_positions[0].tolist()
    assert groups[-1] == "final" and groups.count("final") == 1
    times = item.meta["audio_seconds"][0]
    assert len(times) == 12 and times[0] == 0  # 60 frames: 4 windows of 0.3 s, 3 vectors each
    assert torch.allclose(times.diff(), torch.tensor(0.1, dtype=times.dtype))


@torch.no_grad()
def test_generate_equals_hf_greedy(ours, hf):
    ours.tokenizer.padding_side = "left"
    try:
        inp = ours.prepare([clip(0.8, seed=5), clip(1.4, seed=6)], [PROMPT, "Describe the audio ."], sampling_rate=RATE)
    finally:
        ours.tokenizer.padding_side = "right"
    mine = ours.generate(inp, max_new_tokens=8, return_type="tokens", eos_token_ids=[])
    set_adapter(hf, True)  # as the original's own `generate` does for audio input
    ref = hf.generate(**original_inputs(inp), max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(mine, ref[:, inp["input_ids"].shape[1]:])
    text = ours.prepare(None, PROMPT)
    mine = ours.generate(text, max_new_tokens=6, return_type="tokens", eos_token_ids=[])
    set_adapter(hf, False)
    ref = hf.generate(**original_inputs(text), max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(mine, ref[:, text["input_ids"].shape[1]:])


def trace_item(ours):
    """A 1 s item, the clean top-1 as its answer, and four text positions (early, option, late, final)."""
    from lalm_lens.tracing import token_groups

    item = ours.prepare(clip(1.0, seed=31), PROMPT, answer_prefix=ANSWER_PREFIX, options=["male", "female"],
                        sampling_rate=RATE)
    with torch.no_grad():
        answer = int(ours(item)[0, -1].argmax())
    groups = token_groups(item)
    return item, answer, [groups.index("early_prompt"), groups.index("object") + 1, len(groups) - 3, len(groups) - 1]


@pytest.mark.filterwarnings("ignore:.*ill-posed")
@pytest.mark.parametrize("states", ["attn_out"])
def test_fast_engine_equals_reference_engine(ours, states):
    from lalm_lens.tracing import causal_trace

    item, answer, positions = trace_item(ours)
    # the answer's logit: P(answer) of this tiny item saturates at 1, where any two engines would agree
    kw = dict(answer=answer, states=states, window=3, positions=positions[1:], metric=lambda logits: logits[:, answer])
    ref = causal_trace(ours, item, engine="reference", **kw)
    fast = causal_trace(ours, item, engine="fast", **kw)
    assert fast.settings["engine"]["name"] == "fast"
    assert abs(ref.corrupted - fast.corrupted) <= 1e-5 and ref.patched.std() > 1e-3
    assert (ref.patched - fast.patched).abs().max().item() <= 1e-5


# ---------------------------------------------------------------- mutations: each must move the logits past TOL
@torch.no_grad()
def test_mutation_lora_applied_without_audio(ours, hf):
    inp = ours.prepare(None, PROMPT, answer_prefix=ANSWER_PREFIX)
    ref = reference_forward(hf, inp).logits
    with ours.using_lora("on"):
        moved = max_diff(ours(inp), ref, inp["attention_mask"])
    print(f"\nLoRA on without audio: max |Δlogits| {moved:.3e}")
    assert moved > TOL


@torch.no_grad()
def test_mutation_conv_kernel_flipped(ours, hf):
    inp = ours.prepare(clip(1.0, seed=7), PROMPT, sampling_rate=RATE)
    ref = reference_forward(hf, inp).logits
    kernels = [block.conv.W_depthwise for block in ours.audio_encoder.blocks]
    try:
        for w in kernels:
            w.copy_(w.flip(-1))
        moved = max_diff(ours(inp), ref, inp["attention_mask"])
    finally:
        for w in kernels:
            w.copy_(w.flip(-1))
    print(f"\nconv kernel flipped: max |Δlogits| {moved:.3e}")
    assert moved > TOL
    assert max_diff(ours(inp), ref, inp["attention_mask"]) <= TOL


@torch.no_grad()
def test_mutation_relative_positions_shifted(ours, hf, monkeypatch):
    from lalm_lens.components.conformer_attention import ConformerAttention, relative_distances

    inp = ours.prepare(clip(1.0, seed=8), PROMPT, sampling_rate=RATE)
    ref = reference_forward(hf, inp).logits
    monkeypatch.setattr(ConformerAttention, "distances",
                        lambda self, device: relative_distances(self.cfg.context_size, self.cfg.max_pos_emb, device) + 1)
    moved = max_diff(ours(inp), ref, inp["attention_mask"])
    print(f"\nrelative positions shifted by one: max |Δlogits| {moved:.3e}")
    assert moved > TOL


# ---------------------------------------------------------------- the adapter switch
@torch.no_grad()
def test_lora_modes(ours):
    audio = ours.prepare(clip(0.8, seed=9), PROMPT, sampling_rate=RATE)
    text = ours.prepare(None, PROMPT)
    auto_audio, auto_text = ours(audio), ours(text)
    with ours.using_lora("on"):
        assert torch.equal(ours(audio), auto_audio) and ours.lora_active
        on_text = ours(text)
    with ours.using_lora("off"):
        off_audio = ours(audio)
        assert torch.equal(ours(text), auto_text) and not ours.lora_active
    assert (on_text - auto_text).abs().max() > TOL and (off_audio - auto_audio).abs().max() > TOL
    assert ours.lora_mode == "auto"
    with pytest.raises(ValueError, match="lora mode must be one of"):
        with ours.using_lora("maybe"):
            pass


def test_model_without_adapter_refuses_lora_modes(tmp_path):
    folder = save_granite(tmp_path / "plain", lora=False)
    plain = HookedLALM.from_pretrained(folder, device="cpu")
    assert plain.cfg.lora is None and not plain.has_lora
    with pytest.raises(ValueError, match="no LoRA adapter"):
        with plain.using_lora("on"):
            pass


def test_unsupported_adapters_are_refused():
    from weight_conversion.granite_speech import lora_config

    base = dict(peft_type="LORA", r=8, lora_alpha=16, target_modules=["q_proj", "v_proj"])
    assert lora_config(base) == dict(rank=8, scale=2.0, targets=["q", "v"])
    assert lora_config({**base, "use_rslora": True})["scale"] == pytest.approx(16 / 8**0.5)
    for bad, match in ((dict(use_dora=True), "use_dora"), (dict(target_modules=["o_proj"]), "o_proj"),
                       (dict(bias="all"), "biases"), (dict(peft_type="IA3"), "IA3")):
        with pytest.raises(NotImplementedError, match=match):
            lora_config({**base, **bad})


def test_bad_features_shape_is_refused(ours):
    features = torch.zeros(1, 160, 40)  # a Whisper-style [batch, mels, frames] layout
    with pytest.raises(ValueError, match=r"input_features must be \[batch, frames, 160\]"):
        ours.encode_audio(features)


# ---------------------------------------------------------------- causal_trace(lora=...)
@torch.no_grad()
def brute_force_trace(model, item, answer, positions, clean_mode, corrupted_mode):
    """P(answer) of every (layer, position) cell by plain hooked forwards, the adapter set per run by hand."""
    from transformer_lens.utilities import get_act_name

    from lalm_lens.tracing import Silence

    corrupted = Silence().apply(model, item).batch()
    with model.using_lora(clean_mode):
        _, cache = model.run_with_cache(item)
    final = item["input_ids"].shape[1] - 1
    prob = lambda logits: logits[0, final, answer].item()  # noqa: E731  (the answer's logit: P saturates here)
    with model.using_lora(corrupted_mode):
        p_corrupted = prob(model(corrupted))
        cells = []
        for layer in range(model.cfg.n_layers):
            for pos in positions:
                name = get_act_name("resid_post", layer)

                def restore(act, hook, pos=pos):
                    act[:, pos] = cache[hook.name][:, pos]
                    return act

                cells.append(prob(model.run_with_hooks(corrupted, fwd_hooks=[(name, restore)])))
    return p_corrupted, torch.tensor(cells, dtype=torch.float64).view(model.cfg.n_layers, len(positions))


@pytest.mark.filterwarnings("ignore:.*ill-posed")
@pytest.mark.parametrize("lora, clean_mode, corrupted_mode", [("on", "on", "on"), ("off", "off", "off"),
                                                              ("clean", "on", "off")])
def test_causal_trace_lora_option_equals_brute_force(ours, lora, clean_mode, corrupted_mode):
    from lalm_lens.tracing import causal_trace

    item, answer, positions = trace_item(ours)
    positions = positions[1::2]  # an option token and the final one
    p_corrupted, cells = brute_force_trace(ours, item, answer, positions, clean_mode, corrupted_mode)
    for engine in ("fast", "reference") if lora == "clean" else ("fast",):  # fast == reference: tested above
        result = causal_trace(ours, item, answer=answer, positions=positions, engine=engine, lora=lora,
                              metric=lambda logits: logits[:, answer])
        assert result.settings["lora"] == lora and ours.lora_mode == "auto"
        assert abs(result.corrupted - p_corrupted) <= 1e-5
        assert (result.patched - cells).abs().max().item() <= 1e-5, (engine, result.patched, cells)
    if lora == "clean":  # the runs really differ: the corrupted run without the adapter, the clean one with it
        on_corrupted, on_cells = brute_force_trace(ours, item, answer, positions, "on", "on")
        assert abs(on_corrupted - p_corrupted) > 1e-4 and (on_cells - cells).abs().max() > 1e-4


def test_causal_trace_lora_option_is_checked(ours, qwen2_audio):
    from lalm_lens.tracing import causal_trace

    item = ours.prepare(clip(0.5), PROMPT, sampling_rate=RATE)
    with pytest.raises(ValueError, match=r"lora='both': use one of \('on', 'off', 'clean'\)"):
        causal_trace(ours, item, answer=0, lora="both")
    other = qwen2_audio.prepare(clip(0.5), PROMPT, sampling_rate=RATE)
    with pytest.raises(ValueError, match="needs a model with a LoRA adapter"):
        causal_trace(qwen2_audio, other, answer=0, lora="on")


def test_verify(folder):
    import lalm_lens

    report = lalm_lens.verify(str(folder), device="cpu")
    print(f"\n{report}")
    assert report.passed and report.audio_embeds_diff is not None and report.audio_embeds_diff <= TOL
    assert len(report.encoder_layers) == 2 and max(report.encoder_layers + report.lm_layers) <= TOL


def test_adapter_key_layouts(ours):
    """Adapter keys as peft saves them from transformers 5 (`model.language_model.*`) and 4 (`language_model.model.*`)."""
    from weight_conversion.granite_speech import adapter_key_map

    table = adapter_key_map(ours.config)
    for key in ("base_model.model.model.language_model.layers.1.self_attn.q_proj.lora_A.weight",
                "base_model.model.language_model.model.layers.1.self_attn.q_proj.lora_A.weight",
                "base_model.model.language_model.model.layers.1.self_attn.q_proj.lora_A.default.weight"):
        assert table.lookup(key)[0] == "blocks.1.attn.lora_q.A", key
    with pytest.raises(KeyError):
        table.lookup("base_model.model.model.language_model.layers.1.mlp.up_proj.lora_A.weight")


def test_missing_adapter_files(folder, tmp_path):
    import shutil

    for name in ("no_weights", "no_adapter"):
        shutil.copytree(folder, tmp_path / name)
    (tmp_path / "no_weights" / "adapter_model.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="adapter_config.json but no adapter_model.safetensors"):
        HookedLALM.from_pretrained(tmp_path / "no_weights", device="cpu")
    for name in ("adapter_model.safetensors", "adapter_config.json"):
        (tmp_path / "no_adapter" / name).unlink()
    with pytest.warns(UserWarning, match="holds no adapter_config.json"):
        plain = HookedLALM.from_pretrained(tmp_path / "no_adapter", device="cpu")
    assert not plain.has_lora
