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
