"""Voxtral: our hooked model against `VoxtralForConditionalGeneration`, through the real mistral_common path."""

import json
import shutil

import pytest
import torch
from transformers import VoxtralForConditionalGeneration

from lalm_lens import HookedLALM
from tests.tiny_models import PROMPT, assert_bf16_agrees, clip, save_voxtral

TOL = 1e-4
PREFIX = "The speaker's gender is"


def max_diff(a, b, valid=None):
    d = (a.float() - b.float()).abs()
    if valid is not None:
        d = d[valid.bool()]
    return d.max().item()


@torch.no_grad()
def test_prompt_is_built_by_mistral_common(voxtral):
    inp = voxtral.prepare(clip(3.0), PROMPT, answer_prefix=PREFIX, options=["male", "female"], sampling_rate=16000)
    tokens = inp.str_tokens[0]
    assert tokens[:3] == ["<s>", "[INST]", "[BEGIN_AUDIO]"]
    assert len(inp.audio_positions[0]) == 375 and inp["input_features"].shape == (1, 128, 3000)
    end = tokens.index("[/INST]")
    assert inp.audio_positions[0].max().item() < end < inp.seq_len - 1
    assert inp.texts[0].endswith("[/INST]" + PREFIX)
    assert "</s>" not in tokens
    options = inp.spans[0]["options"]
    assert "".join(tokens[options[0]:options[1]]).strip().startswith("m")  # "male, female"
    assert inp.spans[0]["answer_prefix"][1] == inp.seq_len


@torch.no_grad()
def test_logits_one_chunk(voxtral, voxtral_hf):
    inp = voxtral.prepare(clip(3.0), PROMPT, answer_prefix=PREFIX, sampling_rate=16000)
    assert max_diff(voxtral(inp), voxtral_hf(**inp).logits) <= TOL


@torch.no_grad()
def test_logits_45_seconds_two_chunks(voxtral, voxtral_hf):
    inp = voxtral.prepare(clip(45.0, seed=2), PROMPT, sampling_rate=16000)
    assert inp["input_features"].shape == (2, 128, 3000)
    assert len(inp.audio_positions[0]) == 750
    chunks, seconds = inp.meta["audio_chunk"][0], inp.meta["audio_seconds"][0]
    assert chunks[374].item() == 0 and chunks[375].item() == 1
    assert seconds[375].item() == pytest.approx(30.0) and seconds[1].item() == pytest.approx(0.08)
    assert max_diff(voxtral(inp), voxtral_hf(**inp).logits) <= TOL


@torch.no_grad()
def test_logits_batch_with_padding(voxtral, voxtral_hf):
    inp = voxtral.prepare([clip(3.0, seed=3), clip(40.0, seed=4)], [PROMPT, "Describe the audio."],
                          sampling_rate=16000)
    assert inp["input_features"].shape[0] == 3 and (inp["attention_mask"] == 0).any()
    assert [len(p) for p in inp.audio_positions] == [375, 750]
    assert max_diff(voxtral(inp), voxtral_hf(**inp).logits, inp["attention_mask"]) <= TOL


@torch.no_grad()
def test_every_layer_matches(voxtral, voxtral_hf):
    inp = voxtral.prepare(clip(35.0, seed=5), PROMPT, sampling_rate=16000)
    logits, cache = voxtral.run_with_cache(inp)
    layer_outputs = []
    handles = [l.register_forward_hook(lambda m, a, o: layer_outputs.append(o)) for l in voxtral_hf.model.audio_tower.layers]
    out = voxtral_hf(**inp, output_hidden_states=True)
    for h in handles:
        h.remove()
    n = voxtral.cfg.n_layers
    for layer in range(n):
        assert max_diff(cache["resid_pre", layer], out.hidden_states[layer]) <= TOL, layer
    assert max_diff(voxtral.ln_final(cache["resid_post", n - 1]), out.hidden_states[n]) <= TOL
    for i, hidden in enumerate(layer_outputs):
        assert max_diff(cache[f"audio_encoder.blocks.{i}.hook_resid_post"], hidden) <= TOL, i
    assert cache["audio_encoder.hook_out"].shape == (2, 1500, 64)  # two chunks, no pooling, no mask
    audio = voxtral_hf.model.get_audio_features(inp["input_features"], return_dict=True).pooler_output
    assert max_diff(cache["hook_audio_embeds"], audio) <= TOL
    assert cache["audio_projector.hook_stacked"].shape == (2, 375, 256)


@torch.no_grad()
def test_generate_equals_hf_greedy(voxtral, voxtral_hf):
    inp = voxtral.prepare([clip(2.0, seed=6), clip(4.0, seed=7)], [PROMPT, PROMPT], sampling_rate=16000)
    ours = voxtral.generate(inp, max_new_tokens=8, return_type="tokens", eos_token_ids=[])
    ref = voxtral_hf.generate(**inp, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=11)
    assert torch.equal(ours, ref[:, inp["input_ids"].shape[1]:])


@torch.no_grad()
def test_bfloat16_within_documented_tolerance(voxtral_dir, voxtral_hf):
    ours = HookedLALM.from_pretrained(voxtral_dir, device="cpu", dtype=torch.bfloat16)
    hf = VoxtralForConditionalGeneration.from_pretrained(voxtral_dir, dtype=torch.bfloat16).eval()
    assert ours.audio_encoder.W_pos.dtype == torch.float32  # kept in float32, as HF does
    inp = ours.prepare(clip(3.0), PROMPT, answer_prefix=PREFIX, sampling_rate=16000)
    a, b = ours(inp), hf(**inp).logits
    assert_bf16_agrees(a, b, voxtral_hf(**inp).logits)


@torch.no_grad()
def test_tie_flag_and_standard_head_dim(tmp_path):
    """The text config says tie, but VoxtralForConditionalGeneration keeps (and saves) its own lm_head: follow it."""
    folder = save_voxtral(tmp_path / "tied", seed=3, head_dim=16, tie=True)
    ours = HookedLALM.from_pretrained(folder, device="cpu")
    hf = VoxtralForConditionalGeneration.from_pretrained(folder).eval()
    assert not ours.cfg.tie_word_embeddings and ours.W_U.data_ptr() != ours.W_E.data_ptr()
    inp = ours.prepare(clip(2.0), PROMPT, sampling_rate=16000)
    assert max_diff(ours(inp), hf(**inp).logits) <= TOL


def test_projector_width_gotcha_is_explained(voxtral_dir, tmp_path):
    folder = tmp_path / "bad"
    shutil.copytree(voxtral_dir, folder)
    config = json.loads((folder / "config.json").read_text())
    config["audio_config"]["intermediate_size"] = 200
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="must agree"):
        HookedLALM.from_pretrained(folder, device="cpu")


def test_text_only_and_verify(voxtral, voxtral_dir):
    import lalm_lens

    inp = voxtral.prepare(None, PROMPT)
    assert "input_features" not in inp and inp.str_tokens[0][:2] == ["<s>", "[INST]"]
    report = lalm_lens.verify(str(voxtral_dir), device="cpu")
    assert report.passed and len(report.encoder_layers) == 2, str(report)
