"""Qwen-Audio (v1): our native hooked model against a reference assembled from HF parts."""

import pytest
import torch

from lalm_lens import HookedLALM
from tests.tiny_models import ANSWER_PREFIX, PROMPT, clip, reference_of, save_qwen_audio

TOL = 1e-4


@pytest.fixture
def qa(qwen_audio):
    return qwen_audio


@pytest.fixture(scope="module")
def ref(qwen_audio_dir):

    return reference_of(qwen_audio_dir, dtype=torch.float32, device="cpu")


def max_diff(a, b, valid=None):
    d = (a.float() - b.float()).abs()
    if valid is not None:
        d = d[valid.bool()]
    return d.max().item()


def test_chatml_prompt_and_audio_span(qa):
    inp = qa.prepare(clip(2.0), PROMPT, answer_prefix=ANSWER_PREFIX, options=["male", "female"], sampling_rate=16000)
    tokens = inp.str_tokens[0]
    assert inp.texts[0].startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
                                   "<|im_start|>user\nAudio 1:<audio>[[[AUDIO:modality]]]")
    span = inp.audio_positions[0]
    assert tokens[span[0]] == "<audio>" and tokens[span[-1]] == "</audio>"
    assert len(span) == 2 * 25 + 2  # 25 per second, plus the two tags
    assert inp.texts[0].endswith("<|im_start|>assistant\n" + ANSWER_PREFIX)
    a, b = inp.spans[0]["options"]
    assert "".join(tokens[a:b]).strip() == "male, female"


@torch.no_grad()
def test_logits_and_every_layer_match_reference(qa, ref):
    inp = qa.prepare(clip(3.3), PROMPT, answer_prefix=ANSWER_PREFIX, sampling_rate=16000)
    logits, cache = qa.run_with_cache(inp)
    outputs = []
    handles = [l.register_forward_hook(lambda m, a, o: outputs.append(o[0] if isinstance(o, tuple) else o))
               for l in ref.encoder.layers]
    out = ref(**inp)
    for h in handles:
        h.remove()
    assert max_diff(logits, out.logits) <= TOL
    t = (int(inp["feature_attention_mask"].sum()) - 1) // 2 + 1
    assert cache["audio_encoder.hook_embed"].shape[1] == t  # cropped to the clip, not padded to 30 s
    for i, hidden in enumerate(outputs):
        assert max_diff(cache[f"audio_encoder.blocks.{i}.hook_resid_post"], hidden) <= TOL, i
    assert max_diff(cache["hook_audio_embeds"], out.audio_embeds) <= TOL
    n = qa.cfg.n_layers
    for layer in range(n):
        assert max_diff(cache["resid_pre", layer], out.hidden_states[layer]) <= TOL
    assert max_diff(qa.ln_final(cache["resid_post", n - 1]), out.hidden_states[n]) <= TOL


@torch.no_grad()
def test_batch_of_two_clip_lengths(qa, ref):
    inp = qa.prepare([clip(1.5, seed=1), clip(4.0, seed=2)], [PROMPT, "Describe the audio."], sampling_rate=16000)
    assert [len(p) for p in inp.audio_positions] == [39, 102]
    assert max_diff(qa(inp), ref(**inp).logits, inp["attention_mask"]) <= TOL


@torch.no_grad()
def test_generate_equals_reference_greedy(qa, ref):
    inp = qa.prepare(clip(2.0, seed=3), PROMPT, sampling_rate=16000)
    ours = qa.generate(inp, max_new_tokens=6, return_type="tokens", eos_token_ids=[])
    theirs = ref.generate(**inp, max_new_tokens=6, eos_token_id=None, pad_token_id=0)
    assert torch.equal(ours, theirs)


def test_refuses_inputs_past_seq_length(qa):
    ids = torch.zeros(1, 2049, dtype=torch.long)
    with pytest.raises(ValueError, match="context is 2048"):
        qa(ids)


def test_base_model_raw_format_and_verify(tmp_path):
    import lalm_lens

    folder = save_qwen_audio(tmp_path / "base", seed=5, chat=False)
    model = HookedLALM.from_pretrained(folder, device="cpu")
    inp = model.prepare(clip(1.0), "<|startofanalysis|><|en|><|question|>What is it?<|answer|>", sampling_rate=16000)
    assert inp.str_tokens[0][0] == "<audio>" and "<|question|>" in inp.str_tokens[0]
    report = lalm_lens.verify(str(folder), device="cpu")
    assert report.passed and len(report.encoder_layers) == 2, str(report)


@torch.no_grad()
def test_bfloat16_is_as_close_to_float32_as_the_reference(qwen_audio_dir, qa, ref):
    """In bfloat16 both sides round differently; ours must stay at least as close to the float32 result."""

    ours16 = HookedLALM.from_pretrained(qwen_audio_dir, device="cpu", dtype=torch.bfloat16)
    ref16 = reference_of(qwen_audio_dir, dtype=torch.bfloat16, device="cpu")
    inp = qa.prepare(clip(2.0), PROMPT, answer_prefix=ANSWER_PREFIX, sampling_rate=16000)
    truth = qa(inp)
    ours_err = max_diff(ours16(inp), truth)
    ref_err = max_diff(ref16(**inp).logits, truth)
    assert ours_err <= 1.25 * ref_err and ours_err <= 0.1 * truth.abs().max().item()


def test_reference_is_built_without_random_init_in_the_target_dtype(qwen_audio_dir, monkeypatch):
    """One copy of the weights, already in the target dtype: no module is initialised randomly in memory first
    (initialisers may run on the meta device, where they allocate and compute nothing)."""
    import torch.nn.init as init

    def guard(original):
        def init_fn(tensor, *args, **kwargs):
            if not tensor.is_meta:
                raise AssertionError(f"the reference initialised a {tuple(tensor.shape)} weight in memory")
            return original(tensor, *args, **kwargs)
        return init_fn

    for name in ("normal_", "uniform_", "kaiming_uniform_", "xavier_uniform_", "trunc_normal_", "zeros_", "ones_"):
        monkeypatch.setattr(init, name, guard(getattr(init, name)))
    ref16 = reference_of(qwen_audio_dir, dtype=torch.bfloat16, device="cpu")
    dtypes = {p.dtype for p in ref16.parameters()}
    assert dtypes == {torch.bfloat16}
    assert not any(p.is_meta for p in ref16.parameters())
