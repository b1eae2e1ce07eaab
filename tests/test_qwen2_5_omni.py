"""Qwen2.5-Omni thinker: our hooked model against `Qwen2_5OmniThinkerForConditionalGeneration`.

Tiny checkpoints from `tests/tiny_omni.py` (n_window 50: 1 s chunks). Float32: logits, every
encoder block and every LM layer within 1e-4 (valid positions); each case prints its max |Δ|.
"""

import copy
import warnings

import numpy as np
import pytest
import torch
from transformers import Qwen2_5OmniThinkerForConditionalGeneration, WhisperFeatureExtractor

import lalm_lens
from lalm_lens import HookedLALM
from lalm_lens.families.qwen2_5_omni.prompts import OmniPrompts
from lalm_lens.families.qwen2_5_omni.reference import REFERENCE
from lalm_lens.tracing import GaussianNoise, causal_trace, token_groups
from tests import tiny_omni
from tests.tiny_models import ANSWER_PREFIX, PROMPT, assert_bf16_agrees, clip

TOL = 1e-4


@pytest.fixture(scope="module")
def thinker_dir(qwen2_5_omni_dir):
    return qwen2_5_omni_dir


@pytest.fixture(scope="module")
def full_dir(tmp_path_factory, thinker_dir):
    return tiny_omni.save_omni_full(tmp_path_factory.mktemp("omni_full"), thinker_dir)


@pytest.fixture(scope="module")
def ours(qwen2_5_omni):
    return qwen2_5_omni


@pytest.fixture(scope="module")
def hf(thinker_dir):
    return Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(thinker_dir).eval()


def _diff(a, b, valid=None) -> float:
    d = (a.float() - b.float()).abs()
    return (d[valid.bool()] if valid is not None else d).max().item()


@torch.no_grad()
def compare(ours, hf, inp, case: str) -> dict:
    """max |Δ| of the logits, every LM layer, every encoder block and the audio vectors, on valid positions."""
    enc = []
    layers = REFERENCE.encoder_layers(hf)  # views giving [clips, pos, d]
    handles = [layer.register_forward_hook(lambda m, a, out: enc.append(out[0])) for layer in layers]
    try:
        ref = REFERENCE.forward(hf, inp)
    finally:
        for h in handles:
            h.remove()
    logits, cache = ours.run_with_cache(inp)
    valid = inp["attention_mask"]
    n = ours.cfg.n_layers
    d = {"logits": _diff(logits, ref.logits, valid)}
    d.update({f"lm {i}": _diff(cache[f"blocks.{i}.hook_resid_pre"], ref.hidden_states[i], valid) for i in range(n)})
    d["lm final norm"] = _diff(ours.ln_final(cache[f"blocks.{n - 1}.hook_resid_post"]), ref.hidden_states[n], valid)
    if "input_features" in inp:
        conv = (inp["feature_attention_mask"].sum(-1) - 1) // 2 + 1
        frames = torch.arange(int(conv.max()))[None] < conv[:, None]
        assert len(enc) == len(ours.audio_encoder.blocks)
        for i, theirs in enumerate(enc):
            d[f"encoder {i}"] = _diff(cache[f"audio_encoder.blocks.{i}.hook_resid_post"], theirs, frames)
        assert cache["hook_audio_embeds"].shape == ref.audio_embeds.shape
        d["audio embeds"] = _diff(cache["hook_audio_embeds"], ref.audio_embeds)
    print(f"\n[{case}] max |Δ|: " + ", ".join(f"{k} {v:.1e}" for k, v in d.items()))
    assert max(d.values()) <= TOL, d
    return d


def test_one_clip_every_layer(ours, hf):
    inp = ours.prepare(clip(3.0), PROMPT, answer_prefix=ANSWER_PREFIX, sampling_rate=16000)
    assert int(inp["feature_attention_mask"].sum()) == 300  # three 1 s chunks
    assert len(inp.audio_positions[0]) == 75
    compare(ours, hf, inp, "one 3 s clip")


@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_batch_of_two_lengths(ours, hf, side):
    ours.tokenizer.padding_side = side
    try:  # 130 frames (chunks 100 + 30) and 255 frames (100 + 100 + 55: an odd conv length, last frame unpooled)
        inp = ours.prepare([clip(1.3, seed=1), clip(2.55, seed=2)], [PROMPT, "Describe the audio ."],
                           sampling_rate=16000)
    finally:
        ours.tokenizer.padding_side = "right"
    assert (inp["attention_mask"] == 0).any()
    assert inp["feature_attention_mask"].sum(-1).tolist() == [130, 255]
    assert [len(p) for p in inp.audio_positions] == [32, 64]
    compare(ours, hf, inp, f"padded batch, {side} padding")


def test_text_only(ours, hf):
    inp = ours.prepare(None, PROMPT, answer_prefix=ANSWER_PREFIX)
    assert "input_features" not in inp
    compare(ours, hf, inp, "text only")


def test_35_s_clip_is_cut_to_the_processor_window(ours, hf):
    with pytest.warns(UserWarning, match="truncated to the first 30 s"):
        inp = ours.prepare(clip(35.0, seed=3), PROMPT, sampling_rate=16000)
    assert int(inp["feature_attention_mask"].sum()) == 3000 and len(inp.audio_positions[0]) == 750
    compare(ours, hf, inp, "35 s clip cut to 30 s (30 chunks)")


def test_released_300_s_window_takes_a_35_s_clip_whole(ours, hf):
    """The released preprocessor_config pads and cuts at 300 s (chunk_length 300): no 30 s limit."""
    processor = copy.copy(ours.processor)
    released = WhisperFeatureExtractor(feature_size=128, chunk_length=300, return_attention_mask=True)
    processor.feature_extractor = released
    prompts = OmniPrompts(processor, ours.config)
    assert prompts.max_seconds == 300.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        inp = prompts.prepare(clip(35.0, seed=4), PROMPT, sampling_rate=16000)
    assert tuple(inp["input_features"].shape) == (1, 128, 30000) and len(inp.audio_positions[0]) == 875
    with torch.no_grad():
        d = _diff(ours(inp), hf(**inp).logits)
    print(f"\n[35 s clip in a 300 s window] max |Δ| logits {d:.1e}")
    assert d <= TOL


def test_rope_streams_hook_is_three_equal_streams(ours, hf):
    ours.tokenizer.padding_side = "left"
    try:
        inp = ours.prepare([clip(1.3, seed=1), clip(2.55, seed=2)], [PROMPT, PROMPT], sampling_rate=16000)
    finally:
        ours.tokenizer.padding_side = "right"
    _, cache = ours.run_with_cache(inp, names_filter="rotary.hook_positions")
    pos = cache["rotary.hook_positions"]
    assert tuple(pos.shape) == (3, *inp["input_ids"].shape)
    assert torch.equal(pos[0], pos[1]) and torch.equal(pos[1], pos[2])
    theirs, _ = hf.get_rope_index(inp["input_ids"], None, None, inp["attention_mask"], False,
                                  inp["feature_attention_mask"].sum(-1))
    assert torch.equal(pos, theirs)


def test_multimodal_rope_recomposes_like_the_original():
    """Three different streams (as vision positions would be) at the 7B's d_head 128 and sections [16, 24, 24]."""
    from transformers import Qwen2_5OmniTextConfig
    from transformers.models.qwen2_5_omni.modeling_qwen2_5_omni import Qwen2_5OmniRotaryEmbedding

    from lalm_lens.components.multimodal_rotary import MultimodalRotary

    cfg = Qwen2_5OmniTextConfig(hidden_size=256, num_attention_heads=2, rope_theta=1e6,
                                rope_scaling={"type": "default", "mrope_section": [16, 24, 24]})
    pos = torch.randint(0, 30000, (3, 2, 7), generator=torch.Generator().manual_seed(0))
    cos, sin = Qwen2_5OmniRotaryEmbedding(cfg)(torch.zeros(1), pos)
    rope = MultimodalRotary(128, 1e6, [16, 24, 24])
    c, s = rope.cos_sin(pos, torch.float32)
    assert torch.equal(c[:, :, 0], cos) and torch.equal(s[:, :, 0], sin)
    c4, _ = rope.cos_sin(torch.cat([pos[:1], pos]), torch.float32)  # generate's [4, batch, pos]: text row first
    assert torch.equal(c4, c)
    c1, s1 = rope.cos_sin(pos[0], torch.float32)  # 1-D ids = three equal streams = plain RoPE
    plain = super(MultimodalRotary, rope).cos_sin(pos[0], torch.float32)
    assert torch.equal(c1, plain[0]) and torch.equal(s1, plain[1])


@torch.no_grad()
def test_generate_equals_hf_greedy(ours, hf):
    ours.tokenizer.padding_side = "left"
    try:
        inp = ours.prepare([clip(1.3, seed=5), clip(2.1, seed=6)], [PROMPT, PROMPT], sampling_rate=16000)
    finally:
        ours.tokenizer.padding_side = "right"
    mine = ours.generate(inp, max_new_tokens=8, return_type="tokens", eos_token_ids=[])
    ref = hf.generate(**inp, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert torch.equal(mine, ref[:, inp["input_ids"].shape[1]:])
    eos = int(mine[0, 2])  # stop row 0 early: the rest of it is padding, as in HF
    mine = ours.generate(inp, max_new_tokens=6, return_type="tokens", eos_token_ids=[eos])
    ref = hf.generate(**inp, max_new_tokens=6, do_sample=False, eos_token_id=eos)
    assert torch.equal(mine, ref[:, inp["input_ids"].shape[1]:])
    assert hf.generation_config.eos_token_id in ours.config.eos_token_ids
    assert hf.generation_config.pad_token_id == ours.config.pad_token_id


@torch.no_grad()
def test_bfloat16(thinker_dir, ours, hf):
    ours16 = HookedLALM.from_pretrained(thinker_dir, device="cpu", dtype=torch.bfloat16)
    hf16 = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(thinker_dir, dtype=torch.bfloat16).eval()
    inp = ours.prepare(clip(3.0), PROMPT, answer_prefix=ANSWER_PREFIX, sampling_rate=16000)
    a = ours16(inp)
    assert a.dtype == torch.bfloat16
    rel = assert_bf16_agrees(a, hf16(**inp).logits, hf(**inp).logits)
    print(f"\n[bfloat16] max |Δ| to the float32 original / max |logits|: {rel:.1e}")


@torch.no_grad()
def test_chunk_hooks_and_lengths(ours):
    """Chunk ids per conv position (-1 past the clip), the block-diagonal mask, and a live hook: one window
    for the whole clip changes the output. The encoder gives 25 tokens per second per clip."""
    inp = ours.prepare([clip(1.3, seed=1), clip(2.55, seed=2)], [PROMPT, PROMPT], sampling_rate=16000)
    enc = ours.audio_encoder(inp["input_features"], inp["feature_attention_mask"].bool())
    assert enc.lengths.tolist() == [32, 64] and enc.hidden.shape[-1] == ours.cfg.d_model
    logits, cache = ours.run_with_cache(inp, names_filter=lambda name: "chunk" in name)
    ids = cache["audio_encoder.hook_chunk_id"]
    assert ids[0].tolist() == [0] * 50 + [1] * 15 + [-1] * 63 and ids[1].tolist() == [0] * 50 + [1] * 50 + [2] * 28
    allowed = cache["audio_encoder.hook_chunk_mask"][:, 0] == 0
    assert tuple(allowed.shape) == (2, 128, 128)
    assert allowed[1, 49, :50].all() and not allowed[1, 49, 50:].any() and allowed[1, 127, 100:].all()
    one_window = ours.run_with_hooks(inp, fwd_hooks=[("audio_encoder.hook_chunk_id", lambda t, hook: t.clamp(max=0))])
    assert (one_window - logits).abs().max().item() > 1e-3
    with pytest.raises(ValueError, match="feature_attention_mask"):
        ours(input_ids=inp["input_ids"], input_features=inp["input_features"])


def test_token_groups_and_audio_times(ours):
    inp = ours.prepare(clip(2.0), PROMPT, answer_prefix=ANSWER_PREFIX, options=["male", "female"], sampling_rate=16000)
    groups = token_groups(inp)
    assert set(groups) == {"template", "audio", "early_prompt", "object", "late_prompt", "final"}
    ids = inp["input_ids"][0]
    audio = [i for i, g in enumerate(groups) if g == "audio"]
    assert len(audio) == 50 and bool((ids[audio] == ours.config.audio_token_id).all())
    assert [inp.str_tokens[0][i] for i, g in enumerate(groups) if g == "object"] == ["male", ",", "female"]
    assert groups[audio[0] - 1] == groups[audio[-1] + 1] == "template"  # <|audio_bos|>, <|audio_eos|>
    assert torch.allclose(inp.meta["audio_seconds"][0], torch.arange(50, dtype=torch.float64) * 0.04)


def test_full_omni_checkpoint_reads_only_thinker_shards(full_dir, ours, monkeypatch):
    from weight_conversion import base

    opened = []
    read = base.read_tensors
    monkeypatch.setattr(base, "read_tensors", lambda path, **kw: (opened.append(path.name), read(path, **kw))[1])
    full = HookedLALM.from_pretrained(full_dir, device="cpu")
    # the audio tower and LM shards only: never the talker/vocoder shard, nor the vision-only one
    assert sorted(opened) == ["model-00001-of-00004.safetensors", "model-00003-of-00004.safetensors"]
    assert not (full_dir / "generation_config.json").exists()  # eos and pad from the thinker config, as HF reads them
    im_end, pad = ours.tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    assert full.config.eos_token_ids == ours.config.eos_token_ids == (im_end,) and full.config.pad_token_id == pad
    theirs = dict(ours.named_parameters())
    for name, p in full.named_parameters():
        assert torch.equal(p, theirs[name]), name
    inp = ours.prepare(clip(1.5), PROMPT, sampling_rate=16000)
    with torch.no_grad():
        assert torch.equal(full(inp), ours(inp))


def test_in_memory_layout_and_tie_flag(tmp_path, thinker_dir, ours, hf):
    """transformers-5 keys (`model.audio_tower.*`, `model.language_model.*`, `lm_head.*`) load the same weights;
    the thinker-level `tie_word_embeddings` decides tying, not the text config's."""
    import shutil

    from safetensors.torch import save_file

    from weight_conversion.qwen2_5_omni import convert_config

    save_file({k: v.contiguous() for k, v in hf.state_dict().items()}, tmp_path / "model.safetensors")
    shutil.copy(thinker_dir / "config.json", tmp_path / "config.json")
    mem = HookedLALM.from_pretrained(tmp_path, device="cpu")
    theirs = dict(ours.named_parameters())
    assert all(torch.equal(p, theirs[n]) for n, p in mem.named_parameters())
    assert mem.prompts is None
    assert convert_config(tiny_omni.thinker_config(tie=True)).lm.tie_word_embeddings  # text config says False
    assert not convert_config(tiny_omni.thinker_config(tie=False)).lm.tie_word_embeddings  # text config says True


@torch.no_grad()
def test_tied_thinker(tmp_path):
    folder = tiny_omni.save_omni_thinker(tmp_path, seed=2, tie=True)
    ours = HookedLALM.from_pretrained(folder, device="cpu")
    hf = Qwen2_5OmniThinkerForConditionalGeneration.from_pretrained(folder).eval()
    assert hf.lm_head.weight.data_ptr() == hf.model.language_model.embed_tokens.weight.data_ptr()
    assert ours.config.lm.tie_word_embeddings
    inp = ours.prepare(clip(1.0), PROMPT, sampling_rate=16000)
    d = _diff(ours(inp), hf(**inp).logits)
    print(f"\n[tied thinker] max |Δ| logits {d:.1e}")
    assert d <= TOL


def test_images_and_videos_are_refused(ours):
    with pytest.raises(ValueError, match="audio and text only"):
        ours.prepare(clip(1.0), PROMPT, sampling_rate=16000, images=[np.zeros((28, 28, 3))])
    with pytest.raises(ValueError, match="audio and text only"):
        ours.prepare(None, "<|vision_bos|><|VIDEO|><|vision_eos|> Describe the audio .")
    with pytest.raises(ValueError, match="audio and text only"):
        ours.prepare(None, "<|IMAGE|> hello", raw=True)
    with pytest.raises(ValueError, match="audio and text only"):
        ours.processor(text=["<|IMAGE|>"], images=[np.zeros((28, 28, 3))])
    inp = ours.prepare(clip(1.0), PROMPT, sampling_rate=16000)
    with pytest.raises(TypeError, match="pixel_values"):
        ours(dict(inp.tensors, pixel_values=torch.zeros(4, 1176), image_grid_thw=torch.tensor([[1, 2, 2]])))


def test_fast_engine_equals_reference(ours):
    """Multimodal RoPE positions through the fast engine's suffix batches ([3, rows, pos])."""
    item = ours.prepare(clip(1.2, seed=31), PROMPT, answer_prefix=ANSWER_PREFIX, options=["male", "female"],
                        sampling_rate=16000)
    with torch.no_grad():
        answer = int(ours(item)[0, -1].argmax())
    groups = token_groups(item)
    kw = dict(answer=answer, states="resid_pre", corruption=GaussianNoise(2, seed=3),
              positions=[groups.index("object") + 1, len(groups) - 3, len(groups) - 1])
    with warnings.catch_warnings():  # a tiny model's trace is ill-posed; the engines must still agree
        warnings.simplefilter("ignore")
        ref = causal_trace(ours, item, engine="reference", **kw)
        fast = causal_trace(ours, item, engine="fast", **kw)
    assert (ref.p_patched - fast.p_patched).abs().max().item() <= 1e-5


@pytest.mark.parametrize("which", ["thinker", "full"])
def test_verify_passes(which, thinker_dir, full_dir):
    report = lalm_lens.verify(str(thinker_dir if which == "thinker" else full_dir), device="cpu")
    print(f"\n[verify {which}] logits {report.max_logit_diff:.1e}, encoder {max(report.encoder_layers):.1e}, "
          f"LM {max(report.lm_layers):.1e}, audio vectors {report.audio_embeds_diff:.1e}")
    assert report.passed, str(report)
    assert len(report.encoder_layers) == 2 and len(report.lm_layers) == 3
    assert max(report.lm_layers + report.encoder_layers + [report.audio_embeds_diff]) <= TOL
