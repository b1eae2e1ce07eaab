"""SAEs, their on-disk formats, splicing into the model, and steering / unit interventions."""

import json

import pytest
import torch
from safetensors.torch import save_file

from lalm_lens.features.formats import load_sae, save_saelens, save_sparsify
from lalm_lens.features.sae import SAE, SAEConfig

D, F = 8, 24


def _x(shape=(3, 5, D), seed=1):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("activation,k", [("relu", None), ("jumprelu", None), ("topk", 4)])
def test_activation_matches_its_formula(activation, k):
    sae = SAE.random(SAEConfig(D, F, activation=activation, k=k), seed=2)
    x = _x()
    h = (x - sae.b_dec) @ sae.W_enc + sae.b_enc
    if activation == "relu":
        want = h.clamp(min=0)
    elif activation == "jumprelu":
        want = torch.where(h > sae.threshold, h, torch.zeros_like(h)).clamp(min=0)
    else:  # the k largest per row, through ReLU
        kth = h.sort(-1, descending=True).values[..., k - 1 : k]
        want = torch.where(h >= kth, h, torch.zeros_like(h)).clamp(min=0)
        assert int((sae.encode(x) != 0).sum(-1).max()) <= k
    got = sae.encode(x)
    assert torch.equal(got, want.detach())
    assert (got != 0).any() and (got == 0).any()
    recons = want @ sae.W_dec + sae.b_dec
    sae.use_error_term = False
    torch.testing.assert_close(sae(x), recons.detach(), atol=1e-6, rtol=0)


def test_centring_is_optional_and_error_term_gives_the_input():
    sae = SAE.random(SAEConfig(D, F, apply_b_dec_to_input=False), seed=3)
    x = _x()
    assert torch.equal(sae.encode(x), torch.relu(x @ sae.W_enc + sae.b_enc).detach())
    assert (sae(x) - x).abs().max() <= 1e-6  # error term on (default): the output is the input


def test_error_term_keeps_feature_edits():
    sae = SAE.random(SAEConfig(D, F), seed=4)
    x = _x()
    sae.hook_sae_acts_post.add_hook(lambda a, hook: a * 0)
    try:
        out = sae(x)
    finally:
        sae.hook_sae_acts_post.remove_hooks()
    clean = torch.relu((x - sae.b_dec) @ sae.W_enc + sae.b_enc) @ sae.W_dec + sae.b_dec
    want = sae.b_dec + (x - clean)  # edited recons + the unedited error
    torch.testing.assert_close(out, want.detach(), atol=1e-5, rtol=0)


def test_bad_config_is_refused_with_the_fix():
    with pytest.raises(ValueError, match="needs k"):
        SAEConfig(D, F, activation="topk")
    with pytest.raises(ValueError, match="activation='gelu'"):
        SAEConfig(D, F, activation="gelu")


def _saelens_folder(tmp_path, arch, v6=True):
    gen = torch.Generator().manual_seed(5)
    w = {"W_enc": torch.randn(D, F, generator=gen), "b_enc": torch.randn(F, generator=gen),
         "W_dec": torch.randn(F, D, generator=gen), "b_dec": torch.randn(D, generator=gen)}
    if arch == "jumprelu":
        w["threshold"] = torch.rand(F, generator=gen)
    save_file(w, str(tmp_path / "sae_weights.safetensors"))
    if v6:
        cfg = {"architecture": arch, "d_in": D, "d_sae": F, "dtype": "float32", "device": "cpu",
               "apply_b_dec_to_input": True, "normalize_activations": "none",
               "metadata": {"model_name": "m", "hook_name": "blocks.1.hook_resid_post", "hook_head_index": None}}
        if arch == "topk":
            cfg["k"] = 3
    else:  # SAELens v5 (flat fields, activation_fn_str)
        cfg = {"d_in": D, "d_sae": F, "activation_fn_str": "topk" if arch == "topk" else "relu",
               "activation_fn_kwargs": {"k": 3} if arch == "topk" else {}, "apply_b_dec_to_input": True,
               "hook_name": "blocks.1.hook_resid_post", "normalize_activations": "none"}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    return w


@pytest.mark.parametrize("arch,v6", [("standard", True), ("jumprelu", True), ("topk", True), ("topk", False)])
def test_saelens_format_round_trip(tmp_path, arch, v6):
    w = _saelens_folder(tmp_path, arch, v6)
    sae = load_sae(tmp_path)
    assert sae.cfg.hook_name == "blocks.1.hook_resid_post"
    assert sae.cfg.activation == {"standard": "relu"}.get(arch, arch)
    for name, t in w.items():
        assert torch.equal(getattr(sae, name).detach(), t)
    again = load_sae(save_saelens(sae, tmp_path / "again"))
    assert again.cfg == sae.cfg
    x = _x()
    assert torch.equal(again.encode(x), sae.encode(x))


def test_saelens_refuses_normalisation_and_bad_shapes(tmp_path):
    _saelens_folder(tmp_path, "standard")
    cfg = json.loads((tmp_path / "cfg.json").read_text())
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, "normalize_activations": "layer_norm"}))
    with pytest.raises(ValueError, match="normalize_activations"):
        load_sae(tmp_path)
    (tmp_path / "cfg.json").write_text(json.dumps({**cfg, "d_sae": F + 1}))
    with pytest.raises(ValueError, match="shape"):
        load_sae(tmp_path)
    with pytest.raises(FileNotFoundError, match="neither"):
        load_sae(tmp_path / "nowhere")


@pytest.mark.parametrize("transcode", [False, True])
def test_sparsify_format_round_trip(tmp_path, transcode):
    gen = torch.Generator().manual_seed(6)
    folder = tmp_path / "layers.1"
    folder.mkdir()
    w = {"encoder.weight": torch.randn(F, D, generator=gen), "encoder.bias": torch.randn(F, generator=gen),
         "W_dec": torch.randn(F, D, generator=gen), "b_dec": torch.randn(D, generator=gen)}
    if transcode:
        w["W_skip"] = torch.randn(D, D, generator=gen)
    save_file(w, str(folder / "sae.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({"activation": "topk", "expansion_factor": 3, "normalize_decoder": True,
                                                  "num_latents": F, "k": 4, "multi_topk": False,
                                                  "skip_connection": transcode, "transcode": transcode, "d_in": D}))
    sae = load_sae(folder, hook_name="blocks.1.hook_resid_post" if not transcode else None)
    assert sae.cfg.hook_name == ("blocks.1.hook_resid_post" if not transcode else "layers.1")
    x = _x()
    xin = x if transcode else x - w["b_dec"]
    pre = torch.relu(xin @ w["encoder.weight"].T + w["encoder.bias"])
    top = pre.topk(4, -1)
    want = top.values[..., :, None].mul(w["W_dec"][top.indices]).sum(-2) + w["b_dec"]
    if transcode:
        want = want + x @ w["W_skip"].T
    sae.use_error_term = False
    torch.testing.assert_close(sae(x), want, atol=1e-5, rtol=0)
    again = load_sae(save_sparsify(sae, tmp_path / "out"))
    assert again.cfg.k == 4 and torch.equal(again.W_enc, sae.W_enc) and torch.equal(again.W_dec, sae.W_dec)
    with pytest.raises(ValueError, match="TopK"):
        save_sparsify(SAE(SAEConfig(D, F)), tmp_path / "relu")


# ---------------------------------------------------------------------- splicing into the model
from lalm_lens.tracing import Silence, causal_trace  # noqa: E402
from tests.tiny_models import ANSWER_PREFIX, PROMPT, clip  # noqa: E402


@pytest.fixture(scope="module")
def item(qwen2_audio):
    inp = qwen2_audio.prepare(clip(1.2, seed=31), PROMPT, answer_prefix=ANSWER_PREFIX, sampling_rate=16000)
    with torch.no_grad():
        inp.meta["answer"] = int(qwen2_audio(inp)[0, -1].argmax())
    return inp


HOOKS = ["blocks.1.hook_resid_post", "audio_encoder.blocks.0.hook_resid_post", "hook_audio_embeds", "blocks.0.attn.hook_z"]
OTHER = ["blocks.0.hook_resid_post", "audio_encoder.blocks.1.hook_resid_post"]


@pytest.fixture(scope="module")
def widths(qwen2_audio, item):
    """The last-axis width of each hook the tests splice at (one cached run)."""
    cache = qwen2_audio.run_with_cache(item, names_filter=lambda n: n in HOOKS + OTHER)[1]
    return {n: cache[n].shape[-1] for n in HOOKS + OTHER}


def _sae_at(widths, hook, activation="topk", seed=7):
    d = widths[hook]
    k = 5 if activation == "topk" else None
    return SAE.random(SAEConfig(d, 4 * d, activation=activation, k=k, hook_name=hook), seed=seed, std=0.2)


@pytest.mark.parametrize("hook", HOOKS)
def test_splice_with_error_term_is_exact_and_without_replaces(qwen2_audio, item, widths, hook):
    model = qwen2_audio
    sae = _sae_at(widths, hook)
    with torch.no_grad():
        base = model(item)
        with model.saes([sae]):
            logits = model(item)
            _, cache = model.run_with_cache(item, names_filter=lambda n: "hook_sae" in n)
            assert f"{hook}.hook_sae_acts_post" in cache and hook in model.hook_dict
            acts = cache[f"{hook}.hook_sae_acts_post"]
            assert int((acts != 0).sum(-1).max()) <= 5
        assert f"{hook}.hook_sae_acts_post" not in model.hook_dict  # removed after the block
        err = (logits - base).abs().max().item()
        assert err <= 1e-6, err
        model.add_sae(sae, use_error_term=False)
        try:
            replaced = model(item)
        finally:
            model.reset_saes()
            sae.use_error_term = True
        assert (replaced - base).abs().max() > 1e-3  # the reconstruction really replaced the activation
        with model.hooks(fwd_hooks=[(hook, lambda a, hook: sae.decode(sae.encode(a)).to(a.dtype))]):
            by_hand = model(item)  # the reconstruction written as a plain hook
        assert (by_hand - replaced).abs().max() <= 1e-5


def test_transcoder_splice(qwen2_audio, item):
    model = qwen2_audio
    d = model.cfg.d_model
    tc = SAE.random(SAEConfig(d, 3 * d, activation="relu", apply_b_dec_to_input=False, hook_name="blocks.0.ln2.hook_normalized",
                              hook_name_out="blocks.0.hook_mlp_out"), seed=8, std=0.2)
    with torch.no_grad():
        base = model(item)
        _, cache = model.run_with_cache(item, names_filter="blocks.0.ln2.hook_normalized")
        with model.saes([tc]):
            same = model(item)
        assert (same - base).abs().max() <= 1e-6
        with model.saes([tc], use_error_term=False):
            _, spliced = model.run_with_cache(item, names_filter=lambda n: n.startswith("blocks.0.hook_mlp_out"))
        want = tc.decode(tc.encode(cache["blocks.0.ln2.hook_normalized"]))
        torch.testing.assert_close(spliced["blocks.0.hook_mlp_out"], want, atol=1e-5, rtol=0)
        assert "blocks.0.hook_mlp_out.hook_sae_acts_post" in spliced
    tc.use_error_term = True


def test_splice_refuses_bad_input(qwen2_audio):
    sae = SAE.random(SAEConfig(qwen2_audio.cfg.d_model, 8))
    with pytest.raises(ValueError, match="hook_name="):
        qwen2_audio.add_sae(sae)
    with pytest.raises(ValueError, match="no hook point 'blocks.9.hook_resid_post'"):
        qwen2_audio.add_sae(sae, "blocks.9.hook_resid_post")
    with pytest.raises(ValueError, match="reset_saes"):
        with qwen2_audio.saes():
            qwen2_audio.add_sae(sae, "blocks.0.hook_resid_post")
            qwen2_audio.add_sae(sae, "blocks.0.hook_resid_post")
    qwen2_audio.reset_saes()
    assert not any("hook_sae" in n for n in qwen2_audio.hook_dict)


@pytest.mark.parametrize("hook,states", [("blocks.0.hook_resid_post", "resid_pre"),
                                         ("audio_encoder.blocks.1.hook_resid_post", "resid_post")])
def test_trace_with_sae_fast_equals_reference(qwen2_audio, item, widths, hook, states, recwarn):
    """SAEs are position-wise, so the fast engine's partial suffixes compute the spliced model exactly."""
    model = qwen2_audio
    sae = _sae_at(widths, hook, activation="jumprelu", seed=9)
    kw = dict(answer=item.meta["answer"], states=states, mode="layers")
    with model.saes([sae], use_error_term=False):
        ref = causal_trace(model, item, engine="reference", **kw)
        fast = causal_trace(model, item, engine="fast", **kw)
    plain = causal_trace(model, item, engine="reference", **kw)
    assert fast.settings["engine"]["name"] == "fast"  # the fast engine honoured the splice itself (no fallback)
    assert not [w for w in recwarn if "reference engine" in str(w.message)]
    assert abs(ref.p_corrupted - fast.p_corrupted) <= 1e-5
    assert (ref.p_patched - fast.p_patched).abs().max().item() <= 1e-5
    assert (ref.p_patched - plain.p_patched).abs().max().item() > 1e-6  # the SAE changed what was traced
    sae.use_error_term = True


# ---------------------------------------------------------------------- steering and unit interventions
from lalm_lens.features.interventions import (AblateHead, AddDirection, ClampFeature, ScaleNeuron,  # noqa: E402
                                              audio_direction, head_audio_attention)


def _direction(model, seed=11):
    return torch.randn(model.cfg.d_model, generator=torch.Generator().manual_seed(seed))


@torch.no_grad()
def test_steering_by_zero_is_the_identity_and_audio_positions_are_causal(qwen2_audio, item):
    model, hook = qwen2_audio, "blocks.0.hook_resid_post"
    base = model(item)
    zero = model.run_with_hooks(item, fwd_hooks=AddDirection(hook, _direction(model), 0.0).hooks(model, item))
    assert torch.equal(zero, base)
    steered = model.run_with_hooks(item, fwd_hooks=AddDirection(hook, _direction(model), 3.0, "audio").hooks(model, item))
    first_audio = int(model.audio_token_mask(model.model_inputs(item)["input_ids"])[0].float().argmax())
    assert torch.equal(steered[:, :first_audio], base[:, :first_audio])  # before the audio: untouched
    assert (steered[:, -1] - base[:, -1]).abs().max() > 1e-2
    at = model.run_with_hooks(item, fwd_hooks=AddDirection(hook, _direction(model), 3.0, [first_audio]).hooks(model, item))
    by_hand = model.run_with_hooks(item, fwd_hooks=[(hook, lambda x, hook: torch.cat(
        [x[:, :first_audio], x[:, first_audio:first_audio + 1] + 3.0 * _direction(model), x[:, first_audio + 1:]], 1))])
    assert torch.equal(at, by_hand)


@pytest.mark.parametrize("mode,scale", [("zero", 0.0), ("mean", 0.0), ("scale", 2.5)])
@torch.no_grad()
def test_ablate_head_equals_the_hand_written_hook(qwen2_audio, item, mode, scale):
    model, layer, head = qwen2_audio, 1, 2

    def by_hand(z, hook):
        z = z.clone()
        h = z[:, :, head]
        z[:, :, head] = {"zero": h * 0, "mean": h.mean((0, 1), keepdim=True).expand_as(h), "scale": h * scale}[mode]
        return z

    want = model.run_with_hooks(item, fwd_hooks=[(f"blocks.{layer}.attn.hook_z", by_hand)])
    got = model.run_with_hooks(item, fwd_hooks=AblateHead(layer, head, mode, scale).hooks(model, item))
    assert torch.equal(got, want)
    assert (got - model(item)).abs().max() > 1e-4


@torch.no_grad()
def test_scale_neuron_equals_the_hand_written_hook(qwen2_audio, item):
    model = qwen2_audio

    def by_hand(post, hook):
        post = post.clone()
        post[..., 3] *= 4.0
        return post

    want = model.run_with_hooks(item, fwd_hooks=[("blocks.0.mlp.hook_post", by_hand)])
    assert torch.equal(model.run_with_hooks(item, fwd_hooks=ScaleNeuron(0, 3, 4.0).hooks(model, item)), want)


@torch.no_grad()
def test_clamp_feature_equals_the_hand_written_sae_computation(qwen2_audio, item, widths):
    model, hook, f, v = qwen2_audio, "blocks.0.hook_resid_post", 5, 4.0
    sae = _sae_at(widths, hook, activation="relu", seed=12)
    by_hand = model.run_with_hooks(item, fwd_hooks=[(hook, lambda x, hook: x + (v - sae.encode(x)[..., f])[..., None] * sae.W_dec[f])])
    with pytest.raises(ValueError, match="add_sae"):
        ClampFeature(sae, f, v).hooks(model)
    with model.saes([sae]):
        clamped = model.run_with_hooks(item, fwd_hooks=ClampFeature(sae, f, v).hooks(model, item))
    err = (clamped - by_hand).abs().max().item()
    assert err <= 1e-5, err
    assert (clamped - model(item)).abs().max() > 1e-3


@torch.no_grad()
def test_generate_with_an_intervention_matches_run_with_hooks(qwen2_audio, item):
    model = qwen2_audio
    steer = [AddDirection("blocks.1.hook_resid_post", _direction(model, 13), 6.0), AblateHead(0, 1)]
    plain = model.generate(item, max_new_tokens=4, return_type="tokens", eos_token_ids=[])
    steered = model.generate(item, max_new_tokens=4, return_type="tokens", interventions=steer, eos_token_ids=[])
    assert not torch.equal(plain, steered)
    inputs = dict(model.model_inputs(item))
    hooks = [h for iv in steer for h in iv.hooks(model, item)]
    for t in range(4):  # greedy without the cache, whole sequence each step
        token = model.run_with_hooks(inputs, fwd_hooks=hooks)[:, -1].argmax(-1)
        assert int(token[0]) == int(steered[0, t])
        inputs["input_ids"] = torch.cat([inputs["input_ids"], token[:, None]], 1)
        inputs["attention_mask"] = torch.cat([inputs["attention_mask"], torch.ones_like(token[:, None])], 1)


@torch.no_grad()
def test_audio_direction_and_head_audio_attention(qwen2_audio, item):
    model, name = qwen2_audio, "blocks.1.hook_resid_post"
    other = qwen2_audio.prepare(clip(0.8, seed=40), PROMPT, answer_prefix=ANSWER_PREFIX, sampling_rate=16000)
    direction = audio_direction(model, [item, other], layer=1)
    diffs = []
    for inp in (item, other):
        run = Silence().apply(model, inp)
        clean = model.run_with_cache(inp, names_filter=name)[1][name]
        corrupt = model.run_with_cache(run.batch(), names_filter=name)[1][name]
        diffs.append((clean - corrupt)[0].mean(0))
    torch.testing.assert_close(direction, torch.stack(diffs).mean(0), atol=1e-5, rtol=0)
    mass = head_audio_attention(model, item)
    assert mass.shape == (model.cfg.n_layers, model.cfg.n_heads)
    assert ((mass >= 0) & (mass <= 1 + 1e-5)).all()
    ids = model.model_inputs(item)["input_ids"][0]
    audio = model.audio_token_mask(ids[None])[0]
    last = int(audio.nonzero().max())
    pattern = model.run_with_cache(item, names_filter="blocks.1.attn.hook_pattern")[1]["blocks.1.attn.hook_pattern"]
    torch.testing.assert_close(mass[1, 3], pattern[0, 3, last + 1:][:, audio].sum(-1).mean(), atol=1e-5, rtol=0)


def test_interventions_refuse_bad_input(qwen2_audio, item):
    with pytest.raises(ValueError, match="layer=7"):
        AblateHead(7, 0).hooks(qwen2_audio)
    with pytest.raises(ValueError, match="head=99"):
        AblateHead(0, 99).hooks(qwen2_audio)
    with pytest.raises(ValueError, match="mode='half'"):
        ScaleNeuron(0, 1, mode="half").hooks(qwen2_audio)
    with pytest.raises(ValueError, match="needs the input"):
        AddDirection("blocks.0.hook_resid_post", _direction(qwen2_audio), 1.0, "audio").hooks(qwen2_audio)
    with pytest.raises(ValueError, match="no such hook"):
        AddDirection("blocks.0.resid", _direction(qwen2_audio)).hooks(qwen2_audio)
    with pytest.raises(ValueError, match="the prompt has"):
        AddDirection("blocks.0.hook_resid_post", _direction(qwen2_audio), 1.0, [10_000]).hooks(qwen2_audio, item)


@torch.no_grad()
def test_steering_effect_counts_flips_with_a_ci(qwen2_audio, item):
    from lalm_lens.features.interventions import steering_effect

    model = qwen2_audio
    other = model.prepare(clip(0.8, seed=40), PROMPT, answer_prefix=ANSWER_PREFIX, sampling_rate=16000)
    answers = [int(model(inp)[0, -1].argmax()) for inp in (item, other)]  # the clean top-1: accuracy 1
    steer = [AddDirection("blocks.1.hook_resid_post", _direction(model, 13), 6.0)]
    flipped = [int(model.run_with_hooks(inp, fwd_hooks=steer[0].hooks(model, inp))[0, -1].argmax()) != a
               for inp, a in zip((item, other), answers)]
    out = steering_effect(model, list(zip((item, other), answers)), steer, n_boot=200)
    assert out["n"] == 2 and out["accuracy"] == 1.0
    assert out["steered_accuracy"] == 1.0 - sum(flipped) / 2 and out["delta"] == -sum(flipped) / 2
    assert out["delta_ci"][0] <= out["delta"] <= out["delta_ci"][1]
    assert any(flipped)
    with pytest.raises(ValueError, match="meta\\['answer'\\]"):
        steering_effect(model, [model.prepare(clip(0.5, seed=41), PROMPT, sampling_rate=16000)], steer)
