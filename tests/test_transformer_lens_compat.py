"""TransformerLens tools on our model: names, ActivationCache methods, patching."""

import pytest
import torch
from transformer_lens import ActivationCache, patching
from transformer_lens.utilities import get_act_name

from tests.tiny_models import ANSWER_PREFIX, PROMPT, clip


@pytest.fixture(scope="module")
def run(qwen2_audio):
    inp = qwen2_audio.prepare(clip(3.0), PROMPT, answer_prefix=ANSWER_PREFIX, sampling_rate=16000)
    with torch.no_grad():
        logits, cache = qwen2_audio.run_with_cache(inp)
    return inp, logits, cache


def test_get_act_name_names_our_hooks(qwen2_audio):
    hooks = qwen2_audio.hook_dict
    n = qwen2_audio.cfg.n_layers
    for layer in range(n):
        for kind in ("resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out", "q", "k", "v", "rot_q",
                     "rot_k", "attn_scores", "pattern", "z", "pre", "pre_linear", "post"):
            assert get_act_name(kind, layer) in hooks, kind
        assert get_act_name("scale", layer, "ln1") in hooks
        assert get_act_name("normalized", layer, "ln2") in hooks
    for name in ("hook_embed", "hook_audio_embeds", "ln_final.hook_scale", "ln_final.hook_normalized",
                 "audio_projector.hook_in", "audio_projector.hook_out", "audio_encoder.hook_conv1",
                 "audio_encoder.hook_out", "audio_encoder.blocks.0.attn.hook_pattern"):
        assert name in hooks, name


def test_cache_is_activation_cache_with_all_hooks(qwen2_audio, run):
    _, _, cache = run
    assert isinstance(cache, ActivationCache)
    opt_in = ("hook_result", "hook_q_input", "hook_k_input", "hook_v_input", "hook_mlp_in", "hook_expert_out")
    expected = {name for name in qwen2_audio.hook_dict if not name.endswith(opt_in)}  # TransformerLens's switches
    assert expected <= set(cache.keys())
    assert cache["pattern", 0].shape[-1] == cache["pattern", 0].shape[-2]


def test_accumulated_resid_and_decompose_add_up(qwen2_audio, run):
    _, _, cache = run
    n = qwen2_audio.cfg.n_layers
    accum, labels = cache.accumulated_resid(return_labels=True)
    assert labels[-1] == "final_post" and accum.shape[0] == n + 1
    assert torch.allclose(accum[-1], cache["resid_post", n - 1])
    parts = cache.decompose_resid()
    assert torch.allclose(parts.sum(0), cache["resid_post", n - 1], atol=1e-5)
    # Layer-wise too: embed + attn/mlp outputs below layer l == resid_pre of l.
    for layer in range(n):
        assert torch.allclose(cache.decompose_resid(layer=layer).sum(0), cache["resid_pre", layer], atol=1e-5)


def test_logit_attrs_sum_to_logit_difference(qwen2_audio, run):
    _, logits, cache = run
    a, b = 10, 20
    parts = cache.decompose_resid(pos_slice=-1)
    attrs = cache.logit_attrs(parts, tokens=torch.tensor([a]), incorrect_tokens=torch.tensor([b]), pos_slice=-1)
    diff = logits[0, -1, a] - logits[0, -1, b]
    assert torch.allclose(attrs.sum(0), diff, atol=1e-4)


def test_stack_head_results_add_up_to_attention_outputs(qwen2_audio, run):
    _, _, cache = run
    n, h = qwen2_audio.cfg.n_layers, qwen2_audio.cfg.n_heads
    heads, labels = cache.stack_head_results(return_labels=True)
    assert heads.shape[0] == n * h and labels[0] == "L0H0"
    for layer in range(n):
        summed = heads[layer * h:(layer + 1) * h].sum(0) + qwen2_audio.blocks[layer].attn.b_O
        assert torch.allclose(summed, cache["attn_out", layer], atol=1e-5)


def test_patching_get_act_patch_resid_pre_matches_manual_patch(qwen2_audio, run):
    clean, _, clean_cache = run
    corrupted = qwen2_audio.prepare_like(clean, torch.zeros(len(clean.waveform)))
    answer = 7

    def metric(logits):
        return logits[0, -1].softmax(-1)[answer]

    view = qwen2_audio.with_audio(corrupted)
    positions = [clean.seq_len - 3, clean.seq_len - 1]
    import pandas as pd

    cells = pd.DataFrame([(layer, pos) for layer in range(qwen2_audio.cfg.n_layers) for pos in positions],
                         columns=["layer", "pos"])
    with torch.no_grad():
        tl = patching.get_act_patch_resid_pre(
            view, corrupted.input_ids, clean_cache, metric, index_axis_names=None, index_df=cells
        )
    for row, (layer, pos) in enumerate(cells.itertuples(index=False)):
        def hook(act, hook, pos=pos):
            act[:, pos] = clean_cache[hook.name][:, pos]
            return act

        with torch.no_grad():
            manual = qwen2_audio.run_with_hooks(corrupted, fwd_hooks=[(get_act_name("resid_pre", layer), hook)])
        assert abs(tl[row].item() - metric(manual).item()) < 1e-6


def test_with_audio_view_matches_model(qwen2_audio, run):
    clean, logits, _ = run
    view = qwen2_audio.with_audio(clean)
    with torch.no_grad():
        assert torch.allclose(view(clean.input_ids), logits, atol=1e-5)
        out, cache = view.run_with_cache(clean.input_ids)
    assert isinstance(cache, ActivationCache) and view.cfg is qwen2_audio.cfg
    with pytest.raises(ValueError, match="do not match"):
        view(clean.input_ids[:, :-1])


def test_to_single_token_and_str_tokens(qwen2_audio, run):
    inp = run[0]
    assert qwen2_audio.to_single_token("male") == qwen2_audio.tokenizer.convert_tokens_to_ids("male")
    with pytest.raises(ValueError, match="not one"):
        qwen2_audio.to_single_token("male female")
    assert qwen2_audio.to_str_tokens(inp.input_ids[0, -2:]) == inp.str_tokens[0][-2:]
