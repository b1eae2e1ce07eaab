"""Shared fixtures: tiny random checkpoints saved with `save_pretrained`, loaded through our own path."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")

import pytest
import torch

from tests import tiny_models

# one thread per pytest-xdist worker (the suite runs as 2 workers, `addopts` in pyproject.toml), else up to 2
torch.set_num_threads(1 if os.environ.get("PYTEST_XDIST_WORKER") else min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def qwen2_audio_dir(tmp_path_factory):
    """Tiny Qwen2-Audio checkpoint (GQA LM) with random biases and a working processor."""
    return tiny_models.save_qwen2_audio(tmp_path_factory.mktemp("qwen2_audio"), n_kv_heads=2)


@pytest.fixture(scope="session")
def qwen2_audio_mha_dir(tmp_path_factory):
    """The same with multi-head attention in the LM (as the real Qwen2-Audio)."""
    return tiny_models.save_qwen2_audio(tmp_path_factory.mktemp("qwen2_audio_mha"), n_kv_heads=4, seed=1)


@pytest.fixture(scope="session")
def qwen2_audio(qwen2_audio_dir):
    from lalm_lens import HookedLALM

    return HookedLALM.from_pretrained(qwen2_audio_dir, device="cpu")


@pytest.fixture(scope="session")
def qwen2_audio_hf(qwen2_audio_dir):
    from transformers import Qwen2AudioForConditionalGeneration

    return Qwen2AudioForConditionalGeneration.from_pretrained(qwen2_audio_dir).eval()


@pytest.fixture(scope="session")
def voxtral_dir(tmp_path_factory):
    """Tiny Voxtral; the LM's head_dim (24) differs from hidden / heads (16), as in Voxtral Mini."""
    return tiny_models.save_voxtral(tmp_path_factory.mktemp("voxtral"), head_dim=24)


@pytest.fixture(scope="session")
def voxtral(voxtral_dir):
    from lalm_lens import HookedLALM

    return HookedLALM.from_pretrained(voxtral_dir, device="cpu")


@pytest.fixture(scope="session")
def voxtral_hf(voxtral_dir):
    from transformers import VoxtralForConditionalGeneration

    return VoxtralForConditionalGeneration.from_pretrained(voxtral_dir).eval()


@pytest.fixture
def clip():
    return tiny_models.clip(seconds=3.0, seed=0)


@pytest.fixture(scope="session")
def desta_dir(tmp_path_factory):
    """Tiny DeSTA2.5: three folders (Whisper, Llama-3.1, connector), as released."""
    return tiny_models.save_desta(tmp_path_factory.mktemp("desta"))


@pytest.fixture(scope="session")
def desta(desta_dir):
    from lalm_lens import HookedLALM

    return HookedLALM.from_pretrained(desta_dir, device="cpu")


@pytest.fixture(scope="session")
def qwen_audio_dir(tmp_path_factory):
    """Tiny Qwen-Audio-Chat v1 in the released key layout."""
    return tiny_models.save_qwen_audio(tmp_path_factory.mktemp("qwen_audio"))


@pytest.fixture(scope="session")
def qwen_audio(qwen_audio_dir):
    from lalm_lens import HookedLALM

    return HookedLALM.from_pretrained(qwen_audio_dir, device="cpu")


@pytest.fixture(scope="session")
def audio_flamingo3_dir(tmp_path_factory):
    """Tiny Audio Flamingo 3 (Qwen2 LM, two-layer GELU projector) with its processor."""
    from tests.tiny_af3 import save_af3

    return save_af3(tmp_path_factory.mktemp("audio_flamingo3"))


@pytest.fixture(scope="session")
def audio_flamingo3(audio_flamingo3_dir):
    from lalm_lens import HookedLALM

    return HookedLALM.from_pretrained(audio_flamingo3_dir, device="cpu")


@pytest.fixture(scope="session")
def qwen2_5_omni_dir(tmp_path_factory):
    """Tiny Qwen2.5-Omni thinker (chunked encoder, 1 s chunks; multimodal RoPE) with its processor."""
    from tests.tiny_omni import save_omni_thinker

    return save_omni_thinker(tmp_path_factory.mktemp("omni_thinker"))


@pytest.fixture(scope="session")
def qwen2_5_omni(qwen2_5_omni_dir):
    from lalm_lens import HookedLALM

    return HookedLALM.from_pretrained(qwen2_5_omni_dir, device="cpu")
