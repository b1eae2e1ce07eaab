"""Qwen3-Omni thinker: our hooked model against `Qwen3OmniMoeThinkerForConditionalGeneration`.

Tiny checkpoints from `tests/tiny_qwen3_omni.py` (1 s chunks, 2-chunk attention windows, 7 experts,
3 per token, one dense layer). Float32: logits, every encoder block, every LM layer and the audio
vectors within 1e-4 on valid positions; router logits within 1e-4 and the chosen experts equal.
Each case prints its max |Δ|.
"""

import warnings

import numpy as np
import pytest
import torch
from transformers import Qwen3OmniMoeThinkerForConditionalGeneration

import lalm_lens
from lalm_lens import HookedLALM
from lalm_lens.families.qwen3_omni_moe.reference import REFERENCE
from lalm_lens.tracing import FastEngine, GaussianNoise, Silence, causal_trace, token_groups
from tests import tiny_qwen3_omni as tiny
from tests.tiny_models import ANSWER_PREFIX, PROMPT, clip

TOL = 1e-4


@pytest.fixture(scope="module")
def thinker_dir(tmp_path_factory):
    return tiny.save_thinker(tmp_path_factory.mktemp("q3_thinker"))


@pytest.fixture(scope="module")
def ours(thinker_dir):
    return HookedLALM.from_pretrained(thinker_dir, device="cpu")


@pytest.fixture(scope="module")
def hf(thinker_dir):
    return Qwen3OmniMoeThinkerForConditionalGeneration.from_pretrained(thinker_dir).eval()


def _diff(a, b, valid=None) -> float:
    d = (a.float() - b.float()).abs()
    return (d[valid.bool()] if valid is not None else d).max().item()


@torch.no_grad()
def compare(ours, hf, inp, case: str) -> dict:
    """max |Δ| of logits, LM layers, encoder blocks, audio vectors and router logits (valid positions);
    the chosen experts must be the original's at every valid position."""
    enc, routers = [], {}
    handles = [layer.register_forward_hook(lambda m, a, out: enc.append(out[0])) for layer in REFERENCE.encoder_layers(hf)]
    for i, layer in enumerate(hf.model.language_model.layers):
        if hasattr(layer.mlp, "gate"):
            handles.append(layer.mlp.gate.register_forward_hook(lambda m, a, out, i=i: routers.__setitem__(i, out)))
    try:
        ref = REFERENCE.forward(hf, inp)
    finally:
        for h in handles:
            h.remove()
    logits, cache = ours.run_with_cache(inp)
    valid = inp["attention_mask"].bool()
    n = ours.cfg.n_layers
    d = {"logits": _diff(logits, ref.logits, valid)}
    d.update({f"lm {i}": _diff(cache[f"blocks.{i}.hook_resid_pre"], ref.hidden_states[i], valid) for i in range(n)})
    d["lm final norm"] = _diff(ours.ln_final(cache[f"blocks.{n - 1}.hook_resid_post"]), ref.hidden_states[n], valid)
    assert sorted(routers) == ours.cfg.moe_layers == [0, 2]
    for i, (r_logits, r_weights, r_ids) in routers.items():
        shape = (*valid.shape, -1)
        d[f"router {i}"] = _diff(cache[f"blocks.{i}.mlp.hook_router_logits"], r_logits.view(shape), valid)
        d[f"top-k weights {i}"] = _diff(cache[f"blocks.{i}.mlp.hook_topk_weights"], r_weights.view(shape), valid)
        assert torch.equal(cache[f"blocks.{i}.mlp.hook_topk_ids"][valid], r_ids.view(shape)[valid]), f"layer {i}"
    if "input_features" in inp:
        lengths, _ = ours.audio_encoder.output_lengths(inp["feature_attention_mask"].sum(-1))
        frames = torch.arange(int(lengths.max()))[None] < lengths[:, None]
        assert len(enc) == len(ours.audio_encoder.blocks)
        for i, theirs in enumerate(enc):
            d[f"encoder {i}"] = _diff(cache[f"audio_encoder.blocks.{i}.hook_resid_post"], theirs, frames)
        assert cache["hook_audio_embeds"].shape == ref.audio_embeds.shape
        d["audio embeds"] = _diff(cache["hook_audio_embeds"], ref.audio_embeds)
    print(f"\n[{case}] max |Δ|: " + ", ".join(f"{k} {v:.1e}" for k, v in d.items()))
    assert max(d.values()) <= TOL, d
    return d


def test_one_clip_every_layer(ours, hf):
    """3 s: three chunks (13 + 13 + 13 positions), two attention windows (26 + 13)."""
    inp = ours.prepare(clip(3.0), PROMPT, answer_prefix=ANSWER_PREFIX, sampling_rate=16000)
    assert int(inp["feature_attention_mask"].sum()) == 300 and len(inp.audio_positions[0]) == 39
    compare(ours, hf, inp, "one 3 s clip")


@pytest.mark.parametrize("side", ["right", "left"])
def test_padded_batch_of_two_lengths(ours, hf, side):
    ours.tokenizer.padding_side = side
    try:  # 130 frames (chunks 100 + 30) and 455 frames (4 full chunks + 55: three attention windows)
        inp = ours.prepare([clip(1.3, seed=1), clip(4.55, seed=2)], [PROMPT, "Describe the audio ."],
                           sampling_rate=16000)
    finally:
        ours.tokenizer.padding_side = "right"
    assert (inp["attention_mask"] == 0).any()
    assert inp["feature_attention_mask"].sum(-1).tolist() == [130, 455]
    assert [len(p) for p in inp.audio_positions] == [13 + 4, 4 * 13 + 7]
    compare(ours, hf, inp, f"padded batch, {side} padding")


def test_clips_shorter_than_a_chunk_use_the_batch_width(ours, hf):
    """Both clips under one chunk: the original convolves both at the longer clip's width."""
    inp = ours.prepare([clip(0.37, seed=3), clip(0.81, seed=4)], [PROMPT, PROMPT], sampling_rate=16000)
    assert inp["feature_attention_mask"].sum(-1).tolist() == [37, 81]
    compare(ours, hf, inp, "two clips shorter than a chunk")
    from lalm_lens.components.chunked_audio_encoder import ChunkedAudioEncoder
    from lalm_lens.components.conv2d_audio_encoder import Conv2dChunkedAudioEncoder

    with pytest.MonkeyPatch.context() as mp, torch.no_grad():  # mutation: every chunk convolved 100 frames wide
        mp.setattr(Conv2dChunkedAudioEncoder, "frame_layout", ChunkedAudioEncoder.frame_layout)
        d = _diff(ours(inp), hf(**inp).logits, inp["attention_mask"])
    print(f"[without the batch-width rule] max |Δ logits| {d:.2e}")
    assert d > TOL


def test_text_only(ours, hf):
    inp = ours.prepare(None, PROMPT, answer_prefix=ANSWER_PREFIX)
    compare(ours, hf, inp, "text only")


def test_token_count_and_times(ours):
    prompts = ours.prompts
    assert [prompts.audio_tokens(n * 160) for n in (99, 100, 101, 300, 455)] == [13, 13, 14, 39, 59]
    times = prompts.token_times(16000 * 2)
    assert len(times) == 26 and times[13] == pytest.approx(1.0) and times[1] == pytest.approx(0.08)


# ------------------------------------------------------------------ mutations: each must move the logits
def _mutated(ours, hf, inp, **cfg) -> float:
    old = {k: getattr(ours.cfg, k) for k in cfg}
    try:
        for k, v in cfg.items():
            setattr(ours.cfg, k, v)
        with torch.no_grad():
            return _diff(ours(inp), hf(**inp).logits, inp["attention_mask"])
    finally:
        for k, v in old.items():
            setattr(ours.cfg, k, v)


def test_mutations_move_the_logits(ours, hf, tmp_path, monkeypatch):
    from lalm_lens.components.moe import MoEMLP

    inp = ours.prepare(clip(2.5, seed=7), PROMPT, answer_prefix=ANSWER_PREFIX, sampling_rate=16000)
    deltas = {"top-k 2 instead of 3": _mutated(ours, hf, inp, experts_per_token=2),
              "norm_topk_prob flipped": _mutated(ours, hf, inp, norm_topk_prob=False)}
    with torch.no_grad():  # chunk order: the second and first 1 s chunks swapped after the convolutions
        swapped = ours.run_with_hooks(inp, fwd_hooks=[("audio_encoder.hook_conv3", lambda t, hook: t[[1, 0, 2]])])
        deltas["chunk order"] = _diff(swapped, hf(**inp).logits)

    # softmax after top-k equals softmax-then-top-k-then-renormalise, so it needs norm_topk_prob=False
    folder = tiny.save_thinker(tmp_path, seed=3, norm_topk_prob=False)
    ours2, hf2 = HookedLALM.from_pretrained(folder, device="cpu"), Qwen3OmniMoeThinkerForConditionalGeneration.from_pretrained(folder).eval()
    with torch.no_grad():
        assert _diff(ours2(inp), hf2(**inp).logits) <= TOL

    def softmax_after_topk(self, x):
        logits = self.hook_router_logits(x @ self.W_router)
        top, ids = logits.topk(self.cfg.experts_per_token, dim=-1)
        return self.hook_topk_ids(ids), self.hook_topk_weights(top.softmax(-1))

    monkeypatch.setattr(MoEMLP, "route", softmax_after_topk)
    with torch.no_grad():
        deltas["softmax after top-k"] = _diff(ours2(inp), hf2(**inp).logits)
    print("\n[mutations] max |Δ logits|: " + ", ".join(f"{k} {v:.2e}" for k, v in deltas.items()))
    assert all(v > TOL for v in deltas.values()), deltas


# ------------------------------------------------------------------ MoE hooks
@torch.no_grad()
def test_expert_outputs_on_request(ours):
    inp = ours.prepare(clip(1.2, seed=8), PROMPT, sampling_rate=16000)
    logits, cache = ours.run_with_cache(inp)
    assert "blocks.0.mlp.hook_expert_out" not in cache  # off by default: it costs n_experts copies of the stream
    k, e = ours.cfg.experts_per_token, ours.cfg.n_experts
    assert cache["blocks.0.mlp.hook_router_logits"].shape[-1] == e
    assert cache["blocks.0.mlp.hook_topk_ids"].shape[-1] == k == 3
    assert torch.allclose(cache["blocks.2.mlp.hook_topk_weights"].sum(-1), torch.ones(1), atol=1e-6)
    assert "blocks.1.mlp.hook_post" in cache and "blocks.1.mlp.hook_router_logits" not in cache  # the dense layer
    ids = cache["blocks.0.mlp.hook_topk_ids"]
    routed = sum(cache[f"blocks.0.mlp.experts.{x}.hook_post"].shape[0] for x in range(e) if
                 f"blocks.0.mlp.experts.{x}.hook_post" in cache)
    assert routed == ids.numel()
    ours.set_use_expert_outputs(True)
    try:
        logits2, cache2 = ours.run_with_cache(inp)
    finally:
        ours.set_use_expert_outputs(False)
    per_expert, dense = cache2["blocks.0.mlp.hook_expert_out"], cache["blocks.0.mlp.hook_expert_weights"]
    assert tuple(per_expert.shape) == (*ids.shape[:-1], e, ours.cfg.d_model) and tuple(dense.shape) == (*ids.shape[:-1], e)
    chosen = torch.zeros(dense.shape, dtype=torch.bool).scatter_(-1, ids, True)
    assert torch.equal(dense != 0, chosen) and torch.equal(per_expert.abs().sum(-1) != 0, chosen)  # 0 where not chosen
    assert torch.equal(dense.gather(-1, ids), cache["blocks.0.mlp.hook_topk_weights"])
    assert _diff(per_expert.sum(-2), cache["blocks.0.hook_mlp_out"]) <= 1e-5 and _diff(logits2, logits) <= 1e-5
    rerouted = ours.run_with_hooks(inp, fwd_hooks=[("blocks.0.mlp.hook_topk_ids", lambda t, hook: (t + 1) % e)])
    assert _diff(rerouted, logits) > 1e-3  # the ids hook is live: editing it re-routes


def test_interleaved_rope_recomposes_like_the_original():
    """Three different streams at the released d_head 128, sections [24, 20, 20]."""
    from transformers import Qwen3OmniMoeTextConfig
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import Qwen3OmniMoeThinkerTextRotaryEmbedding

    from lalm_lens.components.multimodal_rotary import InterleavedMultimodalRotary

    cfg = Qwen3OmniMoeTextConfig(hidden_size=256, num_attention_heads=2, head_dim=128, rope_parameters={
        "rope_type": "default", "rope_theta": 1e6, "mrope_section": [24, 20, 20], "interleaved": True})
    pos = torch.randint(0, 30000, (3, 2, 7), generator=torch.Generator().manual_seed(0))
    cos, sin = Qwen3OmniMoeThinkerTextRotaryEmbedding(cfg)(torch.zeros(1), pos)
    c, s = InterleavedMultimodalRotary(128, 1e6, [24, 20, 20]).cos_sin(pos, torch.float32)
    assert torch.equal(c[:, :, 0], cos) and torch.equal(s[:, :, 0], sin)


# ------------------------------------------------------------------ the library on this family
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


def test_fast_engine_equals_reference(ours):
    """Routing depends only on each token's own state, so the fast engine's suffix re-runs stay exact."""
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
    d = (ref.p_patched - fast.p_patched).abs().max().item()
    print(f"\n[fast engine vs reference] max |Δ p_patched| {d:.1e}")
    assert d <= 1e-5


def test_full_checkpoint_reads_only_thinker_shards(tmp_path, thinker_dir, ours, monkeypatch):
    from weight_conversion import base

    full_dir = tiny.save_full(tmp_path / "full", thinker_dir)
    opened = []
    read = base.read_tensors
    monkeypatch.setattr(base, "read_tensors", lambda path, **kw: (opened.append(path.name), read(path, **kw))[1])
    full = HookedLALM.from_pretrained(full_dir, device="cpu")
    assert sorted(opened) == ["model-00001-of-00004.safetensors", "model-00003-of-00004.safetensors"]
    theirs = dict(ours.named_parameters())
    assert all(torch.equal(p, theirs[name]) for name, p in full.named_parameters())
    assert full.config.audio_token_id == ours.config.audio_token_id and full.prompts is not None


def test_in_memory_layout_with_fused_experts(tmp_path, thinker_dir, ours, hf):
    """transformers-5 keys (`model.language_model.*`, fused `experts.gate_up_proj` / `down_proj`) load the same."""
    import shutil

    from safetensors.torch import save_file

    state = {k: v.contiguous() for k, v in hf.state_dict().items()}
    assert "model.language_model.layers.0.mlp.experts.gate_up_proj" in state
    save_file(state, tmp_path / "model.safetensors")
    shutil.copy(thinker_dir / "config.json", tmp_path / "config.json")
    mem = HookedLALM.from_pretrained(tmp_path, device="cpu")
    theirs = dict(ours.named_parameters())
    assert all(torch.equal(p, theirs[n]) for n, p in mem.named_parameters())


def test_images_videos_and_missing_mask_are_refused(ours):
    with pytest.raises(ValueError, match="audio and text only"):
        ours.prepare(clip(1.0), PROMPT, sampling_rate=16000, images=[np.zeros((32, 32, 3))])
    with pytest.raises(ValueError, match="audio and text only"):
        ours.prepare(None, "<|vision_start|><|video_pad|><|vision_end|> Describe the audio .")
    inp = ours.prepare(clip(1.0), PROMPT, sampling_rate=16000)
    with pytest.raises(ValueError, match="feature_attention_mask"):
        ours(input_ids=inp["input_ids"], input_features=inp["input_features"])


def test_verify_sequential_frees_ours_first(thinker_dir, monkeypatch):
    """`--sequential`: ours runs and is freed (no HookedLALM alive) before the original is loaded; same report."""
    import dataclasses
    import gc
    import weakref

    from lalm_lens import loading
    from lalm_lens.cli import build_parser
    from lalm_lens.families.qwen3_omni_moe import QWEN3_OMNI_MOE

    alive, load = [], QWEN3_OMNI_MOE.reference.load
    real_from_pretrained = HookedLALM.from_pretrained.__func__

    def tracked(cls, *args, **kwargs):
        model = real_from_pretrained(cls, *args, **kwargs)
        alive.append(weakref.ref(model))
        return model

    def checked_load(*args):
        gc.collect()
        assert all(ref() is None for ref in alive), "our model is still alive when the original loads"
        return load(*args)

    monkeypatch.setattr(HookedLALM, "from_pretrained", classmethod(tracked))
    family = dataclasses.replace(QWEN3_OMNI_MOE, reference=dataclasses.replace(REFERENCE, load=checked_load))
    monkeypatch.setattr(loading, "family_for", lambda model_type: family)
    report = lalm_lens.verify(str(thinker_dir), device="cpu", sequential=True)
    print(f"\n[verify --sequential] logits {report.max_logit_diff:.1e}, encoder {max(report.encoder_layers):.1e}, "
          f"LM {max(report.lm_layers):.1e}, audio vectors {report.audio_embeds_diff:.1e}")
    assert report.passed and len(report.lm_layers) == 4 and len(report.encoder_layers) == 2
    assert max(report.lm_layers + report.encoder_layers + [report.audio_embeds_diff]) <= TOL
    assert build_parser().parse_args(["verify", str(thinker_dir), "--sequential"]).sequential


# ------------------------------------------------------------------ expert routing trace
def test_expert_routing_trace_equals_a_brute_force_loop(ours):
    from lalm_lens.tracing.experts import expert_routing_trace

    inp = ours.prepare(clip(1.6, seed=9), PROMPT, answer_prefix=ANSWER_PREFIX, sampling_rate=16000)
    routing = expert_routing_trace(ours, inp, corruption=GaussianNoise(2.0, n_samples=2, seed=1))
    corrupted_inputs = GaussianNoise(2.0, n_samples=2, seed=1).apply(ours, inp)
    ids, audio = inp["input_ids"][0].tolist(), set(inp.audio_positions[0].tolist())
    expected = {}
    for run, (inputs, hooks) in {"clean": (inp, []), "corrupted": (corrupted_inputs.batch(), corrupted_inputs.hooks())}.items():
        with torch.no_grad(), ours.hooks(fwd_hooks=hooks):
            _, cache = ours.run_with_cache(inputs)
        for group in ("audio", "text"):
            positions = [p for p in range(len(ids)) if (p in audio) == (group == "audio")]
            table = torch.zeros(len(routing.layers), ours.cfg.n_experts)
            for row, layer in enumerate(routing.layers):
                for e in range(ours.cfg.n_experts):
                    total = 0.0
                    for sample in range(cache[f"blocks.{layer}.mlp.hook_topk_ids"].shape[0]):
                        for p in positions:
                            for slot in range(ours.cfg.experts_per_token):
                                if cache[f"blocks.{layer}.mlp.hook_topk_ids"][sample, p, slot] == e:
                                    total += cache[f"blocks.{layer}.mlp.hook_topk_weights"][sample, p, slot].item()
                    table[row, e] = total / (len(positions) * cache[f"blocks.{layer}.mlp.hook_topk_ids"].shape[0])
            expected[f"{run}_{group}"] = table
    for name, table in expected.items():
        assert torch.allclose(getattr(routing, name), table, atol=1e-6), name
    assert routing.layers == (0, 2) and torch.allclose(routing.clean_audio.sum(-1), torch.ones(2), atol=1e-5)
    top = routing.most_changed(3, "audio")
    delta = (expected["corrupted_audio"] - expected["clean_audio"]).abs()
    assert abs(top[0][2]) == pytest.approx(delta.max().item(), abs=1e-6) and len(top) == 3
    assert [abs(t[2]) for t in top] == sorted((abs(t[2]) for t in top), reverse=True)
    with pytest.raises(ValueError, match="group must be"):
        routing.change("vision")


def test_expert_routing_trace_needs_a_moe_model(qwen2_5_omni):
    from lalm_lens.tracing.experts import expert_routing_trace

    inp = qwen2_5_omni.prepare(clip(1.0), PROMPT, sampling_rate=16000)
    with pytest.raises(ValueError, match="no mixture-of-experts layer"):
        expert_routing_trace(qwen2_5_omni, inp)


# ------------------------------------------------------------------ expert patching
def _routing_weight(cache, layer, e, row, p) -> float:
    ids, w = cache[f"blocks.{layer}.mlp.hook_topk_ids"], cache[f"blocks.{layer}.mlp.hook_topk_weights"]
    return sum(w[row, p, s].item() for s in range(ids.shape[-1]) if ids[row, p, s] == e)


@torch.no_grad()
def brute_force_expert_cell(model, run, clean, corrupted, answer, layer, positions, e, states) -> float:
    """P(answer) with expert e of `layer` restored at `positions`, by hand: the expert applied to the block's
    normalised input at each position, the difference added to `hook_mlp_out` (no expert hook used)."""
    block, rows, n = model.blocks[layer], run.batch()["input_ids"].shape[0], clean["hook_embed"].shape[1]
    delta = torch.zeros(rows, n, model.cfg.d_model)
    for row in range(rows):
        for p in positions:
            x_corr = block.ln2(corrupted[f"blocks.{layer}.hook_resid_mid"][row, p][None, None])[0, 0]
            y_corr = block.mlp.experts[e](x_corr[None])[0]
            w_clean, w_corr = _routing_weight(clean, layer, e, 0, p), _routing_weight(corrupted, layer, e, row, p)
            if states == "expert_out":
                x_clean = block.ln2(clean[f"blocks.{layer}.hook_resid_mid"][0, p][None, None])[0, 0]
                delta[row, p] = w_clean * block.mlp.experts[e](x_clean[None])[0] - w_corr * y_corr
            else:  # its clean routing weight, the expert run on the corrupted state
                delta[row, p] = (w_clean - w_corr) * y_corr
    hooks = run.hooks() + [(f"blocks.{layer}.hook_mlp_out", lambda x, hook: x + delta)]
    with model.hooks(fwd_hooks=hooks):
        return model(run.batch())[:, -1].softmax(-1)[:, answer].mean().item()


@pytest.mark.parametrize("mode", ["layers", "tokens"])
@pytest.mark.parametrize("states", ["expert_out", "expert_weights"])
def test_expert_trace_equals_a_brute_force_loop_and_the_fast_engine(ours, states, mode):
    """Every cell (layer x expert, or layer x position x expert) of both engines against hand-written hooks;
    the fast engine's suffix re-runs against the reference engine, within 1e-6 (float32)."""
    from lalm_lens.tracing.experts import expert_trace

    inp = ours.prepare(clip(1.4, seed=11), PROMPT, answer_prefix=ANSWER_PREFIX, sampling_rate=16000)
    with torch.no_grad():
        answer = int(ours(inp)[0, -1].argmax())
    n = inp["input_ids"].shape[1]
    positions, layers, experts = [int(inp.audio_positions[0][3]), n - 3, n - 1], [0, 2], [1, 4]
    corruption = GaussianNoise(2.0, n_samples=2, seed=4)
    kw = dict(answer=answer, states=states, mode=mode, layers=layers, experts=experts, positions=positions,
              corruption=corruption)
    with warnings.catch_warnings():  # a tiny model's trace is ill-posed; the numbers must still agree
        warnings.simplefilter("ignore")
        ref = expert_trace(ours, inp, engine="reference", **kw)
        fast = expert_trace(ours, inp, engine="fast", **kw)
        split = expert_trace(ours, inp, engine=FastEngine(max_batch_tokens=48), **kw)  # many small suffix batches
    assert not ours.cfg.use_expert_outputs  # the trace turned it on for its own runs only
    run = corruption.apply(ours, inp)
    with torch.no_grad():
        clean_logits, clean = ours.run_with_cache(inp)
        with ours.hooks(fwd_hooks=run.hooks()):
            corrupted_logits, corrupted = ours.run_with_cache(run.batch())
    spans = [(p,) for p in positions] if mode == "tokens" else [tuple(positions)]
    expected = torch.tensor([[[brute_force_expert_cell(ours, run, clean, corrupted, answer, l, span, e, states)
                               for e in experts] for span in spans] for l in layers], dtype=torch.float64)
    expected = expected if mode == "tokens" else expected[:, 0]
    d_brute = (ref.patched - expected).abs().max().item()
    d_fast = max((f.patched - ref.patched).abs().max().item() for f in (fast, split))
    print(f"\n[expert trace, {states}, {mode}] max |Δ| reference vs brute force {d_brute:.1e}, "
          f"fast vs reference {d_fast:.1e}")
    assert ref.patched.shape == expected.shape and d_brute <= 1e-5 and d_fast <= 1e-6
    assert (ref.patched - ref.corrupted).abs().max().item() > 1e-4  # the patches do something
    prob = lambda logits: logits[:, -1].softmax(-1)[:, answer].mean().item()  # noqa: E731
    assert ref.p_corrupted == pytest.approx(prob(corrupted_logits), abs=1e-6)
    assert ref.p_clean == pytest.approx(prob(clean_logits), abs=1e-6)


def test_expert_out_in_causal_trace_restores_every_expert(ours, tmp_path):
    """`causal_trace(states="expert_out")` restores all experts of a cell: the same as `mlp_out`, in both engines;
    it needs the flag, and exists only at the MoE layers (the default layers)."""
    from lalm_lens.tracing import TraceResult
    from lalm_lens.tracing.experts import expert_trace

    item = ours.prepare(clip(1.2, seed=33), PROMPT, answer_prefix=ANSWER_PREFIX, sampling_rate=16000)
    with torch.no_grad():
        answer = int(ours(item)[0, -1].argmax())
    with pytest.raises(ValueError, match=r"needs model.set_use_expert_outputs\(True\)"):
        causal_trace(ours, item, answer=answer, states="expert_out")
    kw = dict(answer=answer, corruption=GaussianNoise(2, n_samples=2, seed=6))
    ours.set_use_expert_outputs(True)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            experts = {e: causal_trace(ours, item, states="expert_out", engine=e, **kw) for e in ("reference", "fast")}
            mlp = causal_trace(ours, item, states="mlp_out", layers=[0, 2], engine="reference", **kw)
            attribution = causal_trace(ours, item, states="expert_out", engine="attribution", **kw)
        with pytest.raises(ValueError, match=r"exists only at layers \[0, 2\]; layer\(s\) \[1\]"):
            causal_trace(ours, item, answer=answer, states="expert_out", layers=[1])
        with pytest.raises(ValueError, match=r"layer\(s\) \[1\] have none"):
            causal_trace(ours, item, answer=answer, states="expert_out", layers=[0], window=3)
    finally:
        ours.set_use_expert_outputs(False)
    assert experts["reference"].layers == [0, 2] and attribution.patched.shape == mlp.patched.shape
    d = max((experts[e].patched - mlp.patched).abs().max().item() for e in experts)
    print(f"\n[causal_trace expert_out vs mlp_out] max |Δ| {d:.1e}")
    assert d <= 1e-6 and torch.isfinite(attribution.patched).all()

    with warnings.catch_warnings():  # an expert trace saves, loads, summarises and draws like the others
        warnings.simplefilter("ignore")
        result = expert_trace(ours, item, answer=answer, mode="tokens", experts=[0, 6], corruption=Silence())
    loaded = TraceResult.load(result.save(tmp_path / "experts.json"))
    assert type(loaded).__name__ == "ExpertTrace" and torch.equal(loaded.patched, result.patched)
    assert loaded.patched.shape == (2, len(result.positions), 2) and len(result.to_dataframe()) == result.patched.numel()
    top = result.top_experts(2)
    assert top[0][2] == pytest.approx(result.recovery.nan_to_num(-1e9).max().item()) and "0." in result.summary()
    result.plot()


def test_expert_trace_refuses_bad_arguments(ours, qwen2_5_omni):
    from lalm_lens.tracing.experts import expert_trace

    inp = ours.prepare(clip(1.0), PROMPT, sampling_rate=16000)
    with pytest.raises(ValueError, match=r"layer\(s\) \[1\] have none"):
        expert_trace(ours, inp, answer=0, layers=[1])
    with pytest.raises(ValueError, match=r"expert\(s\) \[7\] outside the valid range 0..6"):
        expert_trace(ours, inp, answer=0, experts=[7])
    with pytest.raises(ValueError, match="states must be one of"):
        expert_trace(ours, inp, answer=0, states="mlp_out")
    with pytest.raises(ValueError, match="mode must be"):
        expert_trace(ours, inp, answer=0, mode="experts")
    assert not ours.cfg.use_expert_outputs  # restored after a refusal too
    with pytest.raises(ValueError, match="no mixture-of-experts layer"):
        expert_trace(qwen2_5_omni, qwen2_5_omni.prepare(clip(1.0), PROMPT, sampling_rate=16000), answer=0)


def test_bad_moe_and_encoder_configs_are_refused():
    from dataclasses import replace

    from lalm_lens.components.conv2d_audio_encoder import Conv2dChunkedAudioEncoder
    from lalm_lens.components.moe import MoEMLP
    from weight_conversion.qwen3_omni_moe import convert_config

    config = convert_config(tiny.thinker_config())
    with pytest.raises(ValueError, match="experts_per_token"):
        MoEMLP(replace(config.lm, experts_per_token=8))
    with pytest.raises(ValueError, match="attention_window_frames"):
        Conv2dChunkedAudioEncoder(replace(config.encoder, attention_window_frames=50))
    with pytest.raises(ValueError, match="conv_channels"):
        Conv2dChunkedAudioEncoder(replace(config.encoder, conv_channels=None))
    bad = tiny.thinker_config()
    bad.audio_config.output_dim = 32
    with pytest.raises(ValueError, match="output_dim"):
        convert_config(bad)


def test_other_analyses_run_unchanged(ours):
    """Layer mode through the fast engine (MoE layer outputs restored), the logit lens and attention knockout."""
    from lalm_lens.tracing import attention_knockout, logit_lens

    item = ours.prepare(clip(1.2, seed=32), PROMPT, answer_prefix=ANSWER_PREFIX, sampling_rate=16000)
    with torch.no_grad():
        answer = int(ours(item)[0, -1].argmax())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        kw = dict(answer=answer, mode="layers", states="mlp_out", corruption=GaussianNoise(2, n_samples=1, seed=5))
        fast, ref = causal_trace(ours, item, engine="fast", **kw), causal_trace(ours, item, engine="reference", **kw)
        lens = logit_lens(ours, item, answer=answer)
        knocked = attention_knockout(ours, item, answer=answer)
    assert (fast.p_patched - ref.p_patched).abs().max().item() <= 1e-5
    assert len(lens.clean) == ours.cfg.n_layers and len(knocked.p_knocked) >= 1
