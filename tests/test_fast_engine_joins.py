"""The fast engine against the reference, continued (split from test_fast_engine.py so the two files run on
separate test workers): head states, cells that join after their layer, several items in one batch."""

import pytest
import torch

from lalm_lens.tracing import FastEngine, GaussianNoise, causal_trace
from tests.test_fast_engine import FAMILIES, family, positions_for  # noqa: F401  (the module-scoped fixture)
from tests.tiny_models import clip

pytestmark = pytest.mark.filterwarnings("ignore::lalm_lens.tracing.IllPosedTraceWarning")


@pytest.mark.parametrize("states", ["k", "v", "q", "z"])
def test_fast_equals_reference_for_head_states(family, states):
    """States the last-layer shortcut treats differently: k/v reach the answer from every position."""
    model, item = family
    kw = dict(answer=item.meta["answer"], states=states, positions=positions_for(item))
    ref = causal_trace(model, item, engine="reference", **kw)
    fast = causal_trace(model, item, **kw)
    assert (ref.p_patched - fast.p_patched).abs().max().item() <= 1e-5


SETTLING = ["resid_post", "resid_mid", "mlp_out", "attn_out"]  # states whose patch settles its layer (join.py)


@pytest.mark.parametrize("states", SETTLING)
def test_settling_states_start_after_their_layer(family, states, monkeypatch):
    """Restoring these states at layer l never re-runs block l: the suffix starts at block l + 1, and a
    cell at the last layer reads out the answer position (its own restore) or is the corrupted run."""
    from lalm_lens.tracing.engines import fast as fe

    model, item = family
    suffixes, readouts = [], []
    run_suffixes, run_readouts = fe.run_suffixes, fe.run_readouts
    monkeypatch.setattr(fe, "run_suffixes", lambda m, j, r, grps: suffixes.extend(grps) or run_suffixes(m, j, r, grps))
    monkeypatch.setattr(fe, "run_readouts", lambda m, j, r, grps: readouts.extend(grps) or run_readouts(m, j, r, grps))
    positions = positions_for(item)
    kw = dict(answer=item.meta["answer"], states=states, positions=positions,
              corruption=GaussianNoise(n_samples=2, seed=3))
    fast = causal_trace(model, item, **kw)
    ref = causal_trace(model, item, engine="reference", **kw)
    L, final = model.cfg.n_layers, len(item.str_tokens[0]) - 1
    assert suffixes and all(g.join == g.layers[0] + 1 < L for g in suffixes)
    assert [(g.layers, g.positions) for g in readouts] == [((L - 1,), (final,))]
    assert (ref.p_patched - fast.p_patched).abs().max().item() <= 1e-5
    # the last layer elsewhere than the answer: exactly the corrupted run
    others = [k for k, p in enumerate(positions) if p != final]
    assert torch.equal(fast.p_patched[L - 1, others], torch.full((len(others),), fast.p_corrupted, dtype=torch.float64))
    if states in ("resid_post", "resid_mid"):  # the answer's clean residual after the last block: the clean score
        assert fast.p_patched[L - 1, positions.index(final)].item() == pytest.approx(fast.p_clean, abs=1e-6)


@pytest.mark.parametrize("states, window", [("resid_post", 2), ("attn_out", 3), ("resid_pre", 2)])
def test_several_items_in_one_batch(family, states, window):
    """Cells of items of different lengths (as trace_dataset batches them), windows crossing the skipped layer."""
    from lalm_lens.tracing.engines import ReferenceEngine
    from lalm_lens.tracing.pipeline import TraceSpec, prepare_job

    model, item = family
    other = model.prepare_like(item, clip(0.7, seed=33))

    def spec(it):  # four positions per item (a sweep of every position is test_fast_equals_reference's)
        return TraceSpec(model, states=states, window=window, positions=positions_for(it),
                         corruption=GaussianNoise(n_samples=2, seed=3))

    jobs = [prepare_job(model, spec(it), it, item.meta["answer"])[0] for it in (item, other)]
    # (families that pad every clip to one length, Voxtral and DeSTA's 30 s window, give equal lengths)
    fast, ref = FastEngine(), ReferenceEngine()
    got = fast.patched_many(model, jobs, [fast.baseline(model, job) for job in jobs])
    for job, values in zip(jobs, got):
        want = ref.patched(model, job, ref.baseline(model, job))
        assert (want - values).abs().max().item() <= 1e-5
