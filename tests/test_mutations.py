"""Agreement tests that can fail: each injected bug must push max |Δlogits| past the 1e-4 bound.

With transformers' default init (std 0.02) the tiny models' logits are ~1e-2 and bugs hide under
the bound (attending to padded mel frames moved logits by 3e-6). The tiny checkpoints are drawn at
1/sqrt(width) (`tests.tiny_models.scale_init`); these tests prove the agreement checks now bite.
"""

import contextlib

import numpy as np
import pytest
import torch

from lalm_lens.components.audio_encoder import AudioEncoder
from lalm_lens.components.rotary import rope_inverse_frequencies
from tests.tiny_models import ANSWER_PREFIX, PROMPT, clip, reference_of

TOL = 1e-4


@contextlib.contextmanager
def patched(obj, name, value):
    old = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, old)


@contextlib.contextmanager
def zeroed(param):
    saved = param.detach().clone()
    with torch.no_grad():
        param.zero_()
    try:
        yield
    finally:
        with torch.no_grad():
            param.copy_(saved)


def attend_to_padding(model):
    """Encode padded frames as ordinary frames (no crop, no key mask)."""
    enc = model.audio_encoder
    return patched(enc, "frame_layout", lambda f, m: AudioEncoder.frame_layout(enc, f, m))


def wrong_theta(model):
    cfg = model.cfg
    return patched(model.rotary, "inv_freq", rope_inverse_frequencies(cfg.d_head, cfg.rotary_base * 2, cfg.rope_scaling))


def wrong_eps(model):
    return patched(model.blocks[0].ln1, "eps", 1e-2)


def drop_encoder_q_bias(model):
    return zeroed(model.audio_encoder.blocks[0].attn.b_Q)


def drop_qformer_bias(model):
    return zeroed(model.audio_projector.layers[0].cross_attn.b_Q)


def swap_chunks(model):
    """Read the 30 s chunks of a long clip in the wrong order."""
    enc = model.audio_encoder
    forward = enc.forward
    return patched(enc, "forward", lambda f, m=None, keep_layers=(): forward(f.flip(0), m, keep_layers))


def one_window_per_clip(model):
    """Let every frame see the whole clip (Qwen2.5-Omni attends within its chunks only)."""
    point = model.audio_encoder.hook_chunk_id
    point.add_hook(lambda ids, hook: ids.clamp(max=0), is_permanent=True)
    return _removing(point)


@contextlib.contextmanager
def _removing(point):
    try:
        yield
    finally:
        point.remove_hooks("fwd", including_permanent=True)


def positions_run_on(model):
    """One sinusoid table over the whole clip instead of restarting in every chunk."""
    from lalm_lens.components.audio_encoder import sinusoids

    enc = model.audio_encoder

    def add(x):
        return x + sinusoids(x.shape[1], x.shape[2]).to(x.dtype)[None]

    return patched(enc, "add_positions", add)


MUTATIONS = {
    "qwen2_audio": [attend_to_padding, drop_encoder_q_bias, wrong_theta, wrong_eps],
    "voxtral": [swap_chunks, drop_encoder_q_bias, wrong_theta, wrong_eps],
    "desta": [drop_qformer_bias, drop_encoder_q_bias, wrong_theta, wrong_eps],
    "qwen_audio": [attend_to_padding, drop_encoder_q_bias, wrong_theta, wrong_eps],
    "audio_flamingo3": [attend_to_padding, drop_encoder_q_bias, wrong_theta, wrong_eps, swap_chunks],
    "qwen2_5_omni": [one_window_per_clip, positions_run_on, drop_encoder_q_bias, wrong_theta, wrong_eps],
}


@pytest.fixture(scope="module", params=sorted(MUTATIONS))
def family(request):
    """(name, our model, the original's logits, the input) on an input every mutation can reach."""
    name = request.param
    model = request.getfixturevalue(name)
    ref = reference_of(request.getfixturevalue(f"{name}_dir"))
    seconds = {"voxtral": 45.0, "audio_flamingo3": 40.0}.get(name, 2.0)  # two chunks/windows; padding for the rest
    extra = {"transcript": "hello world"} if name == "desta" else {}
    inp = model.prepare(clip(seconds, seed=61), PROMPT, answer_prefix=ANSWER_PREFIX, sampling_rate=16000, **extra)
    with torch.no_grad():
        logits = model.family.reference.forward(ref, inp).logits
    return name, model, logits, inp


def test_mutations_are_caught(family, capsys):
    name, model, ref_logits, inp = family
    with torch.no_grad():
        clean = (model(inp) - ref_logits).abs().max().item()
    assert clean <= TOL  # unmutated: agrees
    moved = {}
    for mutate in MUTATIONS[name]:
        with mutate(model), torch.no_grad():
            moved[mutate.__name__] = (model(inp) - ref_logits).abs().max().item()
    with torch.no_grad():
        assert (model(inp) - ref_logits).abs().max().item() <= TOL  # restored
    with capsys.disabled():
        print(f"\n[mutations {name}] unmutated {clean:.1e}; " + ", ".join(f"{k} {v:.1e}" for k, v in moved.items()))
    assert all(v > TOL for v in moved.values()), moved
    assert np.isfinite(list(moved.values())).all()
