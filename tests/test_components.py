"""Components on their own: RoPE scaling, sliding window, KV cache, hooks, attention paths."""

import pytest
import torch
from transformers import Qwen2AudioForConditionalGeneration

from lalm_lens import HookedLALM
from lalm_lens.components.kv_cache import KVCache
from lalm_lens.components.rotary import rope_inverse_frequencies
from tests.tiny_models import PROMPT, clip, save_qwen2_audio


def test_llama3_rope_scaling_matches_transformers():
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    rope = dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                original_max_position_embeddings=8192)
    config = LlamaConfig(hidden_size=4096, num_attention_heads=32, rope_parameters=rope)
    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](config, "cpu")
    ours = rope_inverse_frequencies(128, 500000.0, rope)
    assert torch.allclose(ours, expected, rtol=1e-6, atol=0)
    assert not torch.allclose(ours, rope_inverse_frequencies(128, 500000.0))  # scaling changes something


@torch.no_grad()
def test_sliding_window_matches_hf(tmp_path):
    folder = save_qwen2_audio(tmp_path, n_kv_heads=2, seed=3, use_sliding_window=True, sliding_window=16,
                              max_window_layers=0)
    hf = Qwen2AudioForConditionalGeneration.from_pretrained(folder, attn_implementation="eager").eval()
    assert set(hf.config.text_config.layer_types) == {"sliding_attention"}
    ours = HookedLALM.from_pretrained(folder, device="cpu")
    assert ours.cfg.sliding_window == 16
    inp = ours.prepare(clip(1.0), PROMPT, sampling_rate=16000)
    assert inp.seq_len > 16
    assert (ours(inp) - hf(**inp).logits).abs().max().item() <= 1e-4


@torch.no_grad()
def test_kv_cache_incremental_equals_full_forward(qwen2_audio):
    inp = qwen2_audio.prepare(clip(1.0), PROMPT, sampling_rate=16000)
    full = qwen2_audio(inp)
    cache = KVCache(qwen2_audio.cfg.n_layers)
    split = inp.seq_len - 5
    ids = inp.input_ids
    first = qwen2_audio(input_ids=ids[:, :split], input_features=inp["input_features"],
                        feature_attention_mask=inp["feature_attention_mask"], kv_cache=cache)
    assert len(cache) == split
    rest = qwen2_audio(input_ids=ids[:, split:], kv_cache=cache)
    assert torch.allclose(torch.cat([first, rest], dim=1), full, atol=1e-5)


@torch.no_grad()
def test_hooks_context_manager_and_eager_path_agree(qwen2_audio):
    inp = qwen2_audio.prepare(clip(1.0), PROMPT, sampling_rate=16000)
    plain = qwen2_audio(inp)  # scaled_dot_product_attention path
    seen = []
    with qwen2_audio.hooks(fwd_hooks=[("blocks.0.attn.hook_pattern", lambda x, hook: seen.append(x.shape))]):
        eager = qwen2_audio(inp)  # explicit pattern path
    assert seen and seen[0][-1] == seen[0][-2] == inp.seq_len
    assert torch.allclose(plain, eager, atol=1e-5)
    assert not qwen2_audio.blocks[0].attn.hook_pattern.has_hooks()  # removed on exit


@torch.no_grad()
def test_hooks_can_edit_activations(qwen2_audio):
    inp = qwen2_audio.prepare(clip(1.0), PROMPT, sampling_rate=16000)
    zeroed = qwen2_audio.run_with_hooks(inp, fwd_hooks=[("hook_audio_embeds", lambda x, hook: x * 0)])
    _, cache = qwen2_audio.run_with_cache(inp, names_filter=lambda n: n in ("hook_embed", "hook_audio_embeds"))
    assert cache["hook_audio_embeds"].shape == (len(inp.audio_positions[0]), qwen2_audio.cfg.d_model)
    assert not torch.allclose(zeroed, qwen2_audio(inp))
    pos = inp.audio_positions[0]
    assert torch.equal(cache["hook_embed"][0, pos], cache["hook_audio_embeds"])


@torch.no_grad()
def test_attention_result_hook_sums_to_attention_output(qwen2_audio):
    inp = qwen2_audio.prepare(None, PROMPT)
    _, cache = qwen2_audio.run_with_cache(inp)
    qwen2_audio.cfg.use_attn_result = True
    try:
        logits, with_result = qwen2_audio.run_with_cache(inp)
    finally:
        qwen2_audio.cfg.use_attn_result = False
    assert torch.allclose(logits, qwen2_audio(inp), atol=1e-5)
    result = with_result["blocks.1.attn.hook_result"]
    assert torch.allclose(result.sum(-2), cache["attn_out", 1], atol=1e-5)


def test_weights_have_hooked_transformer_layout(qwen2_audio):
    cfg = qwen2_audio.cfg
    attn = qwen2_audio.blocks[0].attn
    assert attn.W_Q.shape == (cfg.n_heads, cfg.d_model, cfg.d_head)
    assert attn.W_K.shape == (cfg.n_key_value_heads, cfg.d_model, cfg.d_head)
    assert attn.W_O.shape == (cfg.n_heads, cfg.d_head, cfg.d_model)
    assert qwen2_audio.blocks[0].mlp.W_in.shape == (cfg.d_model, cfg.d_mlp)
    assert qwen2_audio.blocks[0].mlp.W_out.shape == (cfg.d_mlp, cfg.d_model)
    assert qwen2_audio.W_U.shape == (cfg.d_model, cfg.d_vocab)
    assert qwen2_audio.W_E.shape == (cfg.d_vocab, cfg.d_model)


@torch.no_grad()
def test_random_init_model_runs(qwen2_audio):
    model = HookedLALM(qwen2_audio.config).init_weights(seed=0)
    ids = torch.randint(0, 200, (2, 7))
    assert model(ids).shape == (2, 7, qwen2_audio.cfg.d_vocab)
    with pytest.raises(RuntimeError, match="no processor"):
        model.prepare(clip(1.0), PROMPT)
