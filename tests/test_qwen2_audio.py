"""Qwen2-Audio: our hooked model against `Qwen2AudioForConditionalGeneration`, float32 and bfloat16."""

import pytest
import torch
from transformers import Qwen2AudioForConditionalGeneration

from lalm_lens import HookedLALM
from tests.tiny_models import ANSWER_PREFIX, PROMPT, assert_bf16_agrees, clip

TOL = 1e-4
# bfloat16 keeps 8 mantissa bits; both sides round at different points (our norms
# and softmax run in float32 then cast; HF's SDPA kernels differ), so logits agree
# to a few bf16 ulps of their magnitude. Documented in the README.


def max_diff(a, b, valid=None):
    d = (a.float() - b.float()).abs()
    if valid is not None:
        d = d[valid.bool()]
    return d.max().item()


@pytest.fixture(params=["gqa", "mha"])
def pair(request, qwen2_audio_dir, qwen2_audio_mha_dir):
    folder = qwen2_audio_dir if request.param == "gqa" else qwen2_audio_mha_dir
    ours = HookedLALM.from_pretrained(folder, device="cpu")
    hf = Qwen2AudioForConditionalGeneration.from_pretrained(folder).eval()
    return ours, hf


@torch.no_grad()
def test_logits_one_clip(pair):
    ours, hf = pair
    inp = ours.prepare(clip(3.0), PROMPT, answer_prefix=ANSWER_PREFIX, sampling_rate=16000)
    assert (ours(inp) - hf(**inp).logits).abs().max().item() <= TOL


@pytest.mark.parametrize("side", ["right", "left"])
@torch.no_grad()
def test_logits_batch_of_two_lengths_with_padding(pair, side):
    ours, hf = pair
    ours.tokenizer.padding_side = side
    try:
        inp = ours.prepare([clip(2.0, seed=1), clip(4.5, seed=2)], [PROMPT, "Describe the audio ."], sampling_rate=16000)
    finally:
        ours.tokenizer.padding_side = "right"
    mask = inp["attention_mask"]
    assert (mask == 0).any(), "the batch must contain padding"
    assert inp["feature_attention_mask"].sum(-1).tolist() == [200, 450]
    d = max_diff(ours(inp), hf(**inp).logits, mask)
    assert d <= TOL


@torch.no_grad()
def test_logits_text_only(pair):
    ours, hf = pair
    inp = ours.prepare(None, PROMPT, answer_prefix=ANSWER_PREFIX)
    assert "input_features" not in inp
    assert (ours(inp) - hf(**inp).logits).abs().max().item() <= TOL


@torch.no_grad()
def test_every_layer_matches_hidden_states(pair):
    ours, hf = pair
    inp = ours.prepare([clip(2.0, seed=3), clip(3.0, seed=4)], [PROMPT, PROMPT], sampling_rate=16000)
    logits, cache = ours.run_with_cache(inp)
    out = hf(**inp, output_hidden_states=True)
    n = ours.cfg.n_layers
    # HF: [embeddings, output of layer 0, ..., output of layer n-2, final-normed output]
    for layer in range(n):
        assert max_diff(cache[f"blocks.{layer}.hook_resid_pre"], out.hidden_states[layer]) <= TOL, layer
    assert max_diff(ours.ln_final(cache[f"blocks.{n - 1}.hook_resid_post"]), out.hidden_states[n]) <= TOL
    # Encoder: run the HF audio tower on the same features and the same key mask.
    from transformers.masking_utils import create_bidirectional_mask

    tower = hf.model.audio_tower
    lengths, _ = tower._get_feat_extract_output_lengths(inp["feature_attention_mask"].sum(-1))
    valid = (torch.arange(1500)[None] < lengths[:, None]).long()
    mask = create_bidirectional_mask(config=tower.config, inputs_embeds=torch.zeros(2, 1500, 1), attention_mask=valid)
    layer_outputs = []
    handles = [layer.register_forward_hook(lambda m, a, o: layer_outputs.append(o)) for layer in tower.layers]
    enc = tower(inp["input_features"], attention_mask=mask, output_hidden_states=True)
    for h in handles:
        h.remove()
    # Our encoder crops the padded frames (exact: they are masked keys); compare the valid positions.
    conv_valid = (inp["feature_attention_mask"].sum(-1) - 1) // 2 + 1
    pooled_valid = (conv_valid - 2) // 2 + 1

    def same_on_valid(ours, theirs, valid):
        return all(max_diff(ours[b, :v], theirs[b, :v]) <= TOL for b, v in enumerate(valid.tolist()))

    assert cache["audio_encoder.hook_embed"].shape[1] == int(conv_valid.max()) + 1
    assert same_on_valid(cache["audio_encoder.hook_embed"], enc.hidden_states[0], conv_valid)
    for i, hidden in enumerate(layer_outputs):
        assert same_on_valid(cache[f"audio_encoder.blocks.{i}.hook_resid_post"], hidden, conv_valid), i
    assert same_on_valid(cache["audio_encoder.hook_out"], enc.last_hidden_state, pooled_valid)
    audio = hf.model.multi_modal_projector(enc.last_hidden_state)
    keep = torch.arange(750)[None] < ((lengths - 2) // 2 + 1)[:, None]
    assert max_diff(cache["hook_audio_embeds"], audio[keep]) <= TOL


@torch.no_grad()
def test_bfloat16_within_documented_tolerance(qwen2_audio_dir, qwen2_audio_hf):
    ours = HookedLALM.from_pretrained(qwen2_audio_dir, device="cpu", dtype=torch.bfloat16)
    hf = Qwen2AudioForConditionalGeneration.from_pretrained(qwen2_audio_dir, dtype=torch.bfloat16).eval()
    inp = ours.prepare(clip(3.0), PROMPT, answer_prefix=ANSWER_PREFIX, sampling_rate=16000)
    a, b = ours(inp), hf(**inp).logits
    assert a.dtype == torch.bfloat16
    assert_bf16_agrees(a, b, qwen2_audio_hf(**inp).logits)


@torch.no_grad()
def test_generate_equals_hf_greedy(qwen2_audio, qwen2_audio_hf):
    inp = qwen2_audio.prepare([clip(2.0, seed=5), clip(3.5, seed=6)], [PROMPT, PROMPT], sampling_rate=16000)
    ours = qwen2_audio.generate(inp, max_new_tokens=8, return_type="tokens", eos_token_ids=[])
    ref = qwen2_audio_hf.generate(**inp, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(ours, ref[:, inp["input_ids"].shape[1]:])


@torch.no_grad()
def test_generate_stops_at_eos_like_hf(qwen2_audio, qwen2_audio_hf):
    inp = qwen2_audio.prepare(clip(3.0, seed=7), PROMPT, sampling_rate=16000)
    free = qwen2_audio.generate(inp, max_new_tokens=6, return_type="tokens", eos_token_ids=[])
    eos = int(free[0, 2])
    ours = qwen2_audio.generate(inp, max_new_tokens=6, return_type="tokens", eos_token_ids=[eos])
    ref = qwen2_audio_hf.generate(**inp, max_new_tokens=6, do_sample=False, eos_token_id=eos, pad_token_id=0)
    assert torch.equal(ours, ref[:, inp["input_ids"].shape[1]:])
    assert ours.shape[1] == list(free[0]).index(eos) + 1
    assert isinstance(qwen2_audio.generate(inp, max_new_tokens=3), str)
