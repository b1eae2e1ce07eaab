"""The trace pipeline's seams: prepare/finish, `restoring`, the corruption's own audio vectors, `State`."""

import pytest
import torch

from lalm_lens.tracing import GaussianNoise, Silence, causal_trace
from lalm_lens.tracing.cells import HEAD_STATES, State, state_of
from lalm_lens.tracing.engines import ReferenceEngine, restoring
from lalm_lens.tracing.pipeline import PreparedTrace, TraceSpec, finish, prepare
from tests.tiny_models import ANSWER_PREFIX, PROMPT, clip

pytestmark = pytest.mark.filterwarnings("ignore::lalm_lens.tracing.IllPosedTraceWarning")


@pytest.fixture(scope="module")
def item(qwen2_audio):
    inp = qwen2_audio.prepare(clip(1.0, seed=41), PROMPT, answer_prefix=ANSWER_PREFIX, sampling_rate=16000)
    with torch.no_grad():
        inp.meta["answer"] = int(qwen2_audio(inp)[0, -1].argmax())
    return inp


def test_prepare_then_finish_is_causal_trace(qwen2_audio, item):
    spec = TraceSpec(qwen2_audio, mode="tokens", layers=[0, 1], engine="reference")
    prep = prepare(qwen2_audio, spec, item, item.meta["answer"])
    assert isinstance(prep, PreparedTrace) and isinstance(prep.engine, ReferenceEngine)
    assert prep.checks.items and prep.work > 0 and prep.n_tokens == item["input_ids"].shape[1]
    result = finish(qwen2_audio, prep, prep.patched(qwen2_audio))
    direct = causal_trace(qwen2_audio, item, answer=item.meta["answer"], layers=[0, 1], engine="reference")
    assert torch.equal(result.patched, direct.patched) and result.checks == direct.checks
    assert result.settings == direct.settings and result.token_labels == direct.token_labels


def test_restoring_removes_only_its_own_hook(qwen2_audio, item):
    name = "blocks.0.hook_resid_post"
    seen = []
    qwen2_audio.add_hook(name, lambda x, hook: seen.append("user"))
    try:
        level = qwen2_audio.context_level
        with restoring(qwen2_audio, name, lambda x, hook: seen.append("engine")):
            assert qwen2_audio.context_level == level + 1
            with torch.no_grad():
                qwen2_audio(item)
        assert seen == ["user", "engine"] and qwen2_audio.context_level == level
        seen.clear()
        with torch.no_grad():
            qwen2_audio(item)
        assert seen == ["user"]  # the user's hook stays, the engine's is gone
        with restoring(qwen2_audio, name, None):  # no hook: nothing added
            assert len(qwen2_audio.hook_dict[name].fwd_hooks) == 1
    finally:
        qwen2_audio.reset_hooks()


def test_corrupted_audio_vectors_are_the_hooked_run(qwen2_audio, item):
    corr = GaussianNoise(n_samples=2, seed=5).apply(qwen2_audio, item)
    assert corr.on_audio_vectors
    with torch.no_grad():
        hooked = qwen2_audio.run_with_hooks(corr.batch(), fwd_hooks=corr.hooks())
        audio = qwen2_audio.encode_audio(item["input_features"], item.get("feature_attention_mask"), item["input_ids"])
        given = qwen2_audio(corr.with_audio_vectors(audio))
    assert (hooked - given).abs().max().item() <= 1e-5
    silence = Silence().apply(qwen2_audio, item)
    assert not silence.on_audio_vectors
    with pytest.raises(ValueError, match="not noise on the audio vectors"):
        silence.with_audio_vectors(audio)


def test_states_declare_their_hook_and_unit_axis():
    assert state_of("resid_post") == State("resid_post") and state_of("resid_post").units is None
    assert all(state_of(s).units == "head" for s in HEAD_STATES)
    assert state_of("z").hook(3) == "blocks.3.attn.hook_z"
    assert State("mlp_out").hooks(2) == ["blocks.0.hook_mlp_out", "blocks.1.hook_mlp_out"]
