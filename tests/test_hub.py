"""Hub ids: the small files first, then only the weight files the loader reads."""

import shutil

import huggingface_hub
import pytest

from lalm_lens import HookedLALM
from lalm_lens.hub import METADATA_PATTERNS


def test_a_hub_checkpoint_fetches_only_the_shards_it_reads(qwen2_audio_dir, tmp_path, monkeypatch):
    from transformers import Qwen2AudioForConditionalGeneration

    repo = tmp_path / "repo"  # what the hub holds
    Qwen2AudioForConditionalGeneration.from_pretrained(qwen2_audio_dir).save_pretrained(repo, max_shard_size="100KB")
    for f in qwen2_audio_dir.iterdir():
        if not f.name.startswith("model") and f.is_file() and not (repo / f.name).exists():
            shutil.copy(f, repo / f.name)
    (repo / "consolidated.safetensors").write_bytes(b"x" * 1000)  # Voxtral-style extra weights: never wanted
    for name in ("model.fp32-00001-of-00002.safetensors", "model.fp32-00002-of-00002.safetensors"):
        (repo / name).write_bytes(b"x" * 1000)  # Whisper-style extra float32 shards: never wanted either
    snapshot = tmp_path / "cache" / "snapshots" / "abc123"
    asked = {}

    def fake_snapshot(repo_id, allow_patterns=None, **_):
        asked["patterns"] = allow_patterns
        snapshot.mkdir(parents=True)
        import fnmatch

        for f in repo.iterdir():
            if any(fnmatch.fnmatch(f.name, p) for p in allow_patterns):
                shutil.copy(f, snapshot / f.name)
        return str(snapshot)

    def fake_download(repo_id, filename, revision=None, **_):
        asked.setdefault("files", []).append(filename)
        assert revision == "abc123"
        shutil.copy(repo / filename, snapshot / filename)
        return str(snapshot / filename)

    monkeypatch.setattr(huggingface_hub, "snapshot_download", fake_snapshot)
    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    model = HookedLALM.from_pretrained("someone/tiny-qwen2-audio", device="cpu")
    assert asked["patterns"] == METADATA_PATTERNS and not any("safetensors" in p for p in METADATA_PATTERNS)
    shards = sorted(f.name for f in repo.glob("model-*.safetensors"))
    assert sorted(asked["files"]) == shards and "consolidated.safetensors" not in asked["files"]
    assert not any(".fp32-" in f for f in asked["files"] + [f.name for f in snapshot.iterdir()])
    assert model.prepare is not None and model.tokenizer is not None


def test_download_failure_of_a_shard_says_what_to_do(qwen2_audio_dir, tmp_path, monkeypatch):
    from weight_conversion.base import CheckpointError

    snapshot = tmp_path / "snapshots" / "rev"
    snapshot.mkdir(parents=True)
    shutil.copy(qwen2_audio_dir / "config.json", snapshot / "config.json")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", lambda *a, **k: str(snapshot))

    def offline(*a, **k):
        raise OSError("offline")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", offline)
    with pytest.raises(CheckpointError, match="could not download model.safetensors of someone/m; pass a local folder"):
        HookedLALM.from_pretrained("someone/m", device="cpu")
