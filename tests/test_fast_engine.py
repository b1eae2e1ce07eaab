"""The fast engine against the hook-based reference: same numbers for every mode, state, window, corruption."""

import itertools

import numpy as np
import pytest
import torch

from lalm_lens.tracing import FastEngine, GaussianNoise, Silence, Swap, WhiteNoise, causal_trace, token_groups
from tests.tiny_models import ANSWER_PREFIX, PROMPT, clip

# random tiny models: their traces are ill-posed on purpose (tests that expect the warning use pytest.warns)
pytestmark = pytest.mark.filterwarnings("ignore::lalm_lens.tracing.IllPosedTraceWarning")

STATES = ["resid_pre", "resid_mid", "resid_post", "attn_out", "mlp_out"]
CORRUPTIONS = {"silence": Silence(), "noise": GaussianNoise(n_samples=2, seed=3), "snr": WhiteNoise(snr_db=3.0, seed=3),
               "swap": Swap(clip(2.0, seed=32), sampling_rate=16000)}
FAMILIES = ["qwen2_audio", "voxtral", "desta", "qwen_audio", "audio_flamingo3", "qwen2_5_omni"]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request):
    """(model, prepared item) for each landed family."""
    model = request.getfixturevalue(request.param)
    extra = {"transcript": "hello world"} if request.param == "desta" else {}
    item = model.prepare(clip(1.2, seed=31), PROMPT, answer_prefix=ANSWER_PREFIX, options=["male", "female"],
                         sampling_rate=16000, **extra)
    with torch.no_grad():  # the clean top-1 token (byte-level toy vocabularies have no one-token "male")
        item.meta["answer"] = int(model(item)[0, -1].argmax())
    return model, item


def positions_for(item):
    groups = token_groups(item)
    return [groups.index("early_prompt"), groups.index("object") + 1, len(groups) - 3, len(groups) - 1]


@pytest.mark.parametrize("mode, states, window, corruption",
                         list(itertools.product(["tokens", "layers"], STATES, [1, 3], CORRUPTIONS)))
def test_fast_equals_reference(family, mode, states, window, corruption):
    model, item = family
    kw = dict(answer=item.meta["answer"], mode=mode, states=states, window=window, corruption=CORRUPTIONS[corruption],
              positions=positions_for(item))
    ref = causal_trace(model, item, engine="reference", **kw)
    fast = causal_trace(model, item, engine="fast", **kw)
    assert abs(ref.p_corrupted - fast.p_corrupted) <= 1e-5
    assert (ref.p_patched - fast.p_patched).abs().max().item() <= 1e-5


def test_fast_default_positions_and_head_states(family):
    """All non-audio positions (the default), and a per-head state (`z`)."""
    model, item = family
    ref = causal_trace(model, item, answer=item.meta["answer"], states="z", engine="reference")
    fast = causal_trace(model, item, answer=item.meta["answer"], states="z")
    assert fast.settings["engine"]["name"] == "fast"
    assert (ref.p_patched - fast.p_patched).abs().max().item() <= 1e-5


@pytest.mark.parametrize("budget", [1, 64, 10**6])
def test_batch_splitting_does_not_change_results(family, budget):
    model, item = family
    kw = dict(answer=item.meta["answer"], positions=positions_for(item), states="mlp_out", window=3)
    base = causal_trace(model, item, engine="reference", **kw)
    split = causal_trace(model, item, engine=FastEngine(max_batch_tokens=budget), **kw)
    assert (base.p_patched - split.p_patched).abs().max().item() <= 1e-5


def test_explicit_corrupted_dict_input(family):
    model, item = family
    corrupted = model.prepare_like(item, np.zeros_like(item.waveform))
    answer = item.meta["answer"]
    a = causal_trace(model, dict(item.tensors), dict(corrupted.tensors), answer=answer, mode="layers",
                     engine="reference")
    b = causal_trace(model, dict(item.tensors), dict(corrupted.tensors), answer=answer, mode="layers")
    assert a.positions == b.positions and (a.p_patched - b.p_patched).abs().max().item() <= 1e-5


def test_attribution_patching_correlates_with_exact(family, capsys):
    """Reported, not asserted: the gradient approximation against the exact result (closing note)."""
    model, item = family
    exact = causal_trace(model, item, answer=item.meta["answer"], states="resid_pre")
    approx = causal_trace(model, item, answer=item.meta["answer"], states="resid_pre", engine="attribution")
    assert approx.p_patched.shape == exact.p_patched.shape
    assert approx.p_corrupted == pytest.approx(exact.p_corrupted, abs=1e-6)
    a = (exact.p_patched - exact.p_corrupted).flatten()
    b = (approx.p_patched - approx.p_corrupted).flatten()
    r = torch.corrcoef(torch.stack([a, b]))[0, 1].item()
    with capsys.disabled():
        print(f"\n[attribution patching] Pearson r with the exact effects, {a.numel()} cells: {r:.4f}")
    assert np.isfinite(r)


def test_no_op_patches_are_skipped(family, monkeypatch):
    """Restoring a state the corruption never changed (before the audio; `resid_pre` at layer 0 on text)
    is the corrupted run: those cells run no suffix, and their numbers still equal the reference."""
    from lalm_lens.tracing.engines import fast as fe

    model, item = family
    groups = token_groups(item)
    before, after = groups.index("template"), len(groups) - 2
    assert before < groups.index("audio") < after
    suffix_layers = []
    original = fe.run_suffixes
    monkeypatch.setattr(fe, "run_suffixes", lambda m, jobs, runs, grps: suffix_layers.extend(g.layers for g in grps)
                        or original(m, jobs, runs, grps))
    kw = dict(answer=item.meta["answer"], states="resid_pre", window=3, positions=[before, after])
    fast = causal_trace(model, item, **kw)
    ref = causal_trace(model, item, engine="reference", **kw)
    L = model.cfg.n_layers
    # layer 0 with window 3 patches layers (0, 1): only layer 1 is left after the audio, nothing before it
    assert (1,) in suffix_layers and (0, 1) not in suffix_layers
    assert len(suffix_layers) == L  # only the cells at `after` ran
    assert torch.equal(fast.p_patched[:, 0], torch.full((L,), fast.p_corrupted, dtype=torch.float64))
    assert (ref.p_patched - fast.p_patched).abs().max().item() <= 1e-5


def test_answer_only_last_block_equals_full_block(qwen2_audio):
    """The last-layer shortcut: the block at one position per row over projected keys/values of the rest."""
    from lalm_lens.tracing.engines.answer_layer import answer_only

    model = qwen2_audio
    block, T = model.blocks[-1], 9
    at = torch.tensor([6, 8, 3])
    x = torch.randn(3, T, model.cfg.d_model, generator=torch.Generator().manual_seed(0))
    ctx = model.lm_context(T, 0, torch.tensor([[1] * T, [1] * T, [0, 0] + [1] * (T - 2)]), dtype=x.dtype)
    ctx = type(ctx)(ctx.mask.expand(3, -1, -1, -1), tuple(t.expand(3, -1, -1, -1) for t in ctx.rope))
    with torch.no_grad():
        full = block(x, ctx.mask, ctx.rope)
        out = answer_only(block, x, at, ctx)
    assert out.shape == (3, 1, model.cfg.d_model)
    assert (out[:, 0] - full[torch.arange(3), at]).abs().max().item() <= 1e-5
