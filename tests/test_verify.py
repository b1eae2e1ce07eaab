"""`lalm_lens.verify` and `lalm-lens verify` on tiny checkpoints."""

import shutil
import subprocess
import sys
from pathlib import Path

import soundfile
import torch

import lalm_lens
from lalm_lens.cli import main
from tests.tiny_models import clip


def test_verify_function_passes_and_reports_every_layer(qwen2_audio_dir):
    report = lalm_lens.verify(str(qwen2_audio_dir), device="cpu")
    assert report.passed, str(report)
    assert report.max_logit_diff <= 1e-4
    assert len(report.lm_layers) == 3 and len(report.encoder_layers) == 2
    assert max(report.lm_layers + report.encoder_layers) <= 1e-4
    assert "PASS" in str(report)


def test_verify_fails_when_weights_differ(qwen2_audio_dir, monkeypatch):
    from lalm_lens import model as model_module

    original = model_module.HookedLALM.from_pretrained.__func__

    def tampered(cls, *args, **kwargs):
        m = original(cls, *args, **kwargs)
        with torch.no_grad():
            m.blocks[1].mlp.W_out.mul_(1.5)
        return m

    monkeypatch.setattr(model_module.HookedLALM, "from_pretrained", classmethod(tampered))
    report = lalm_lens.verify(str(qwen2_audio_dir), device="cpu")
    assert not report.passed and "FAIL" in str(report)
    assert report.lm_layers[1] <= 1e-4 < report.lm_layers[2]  # the tampered layer is pinpointed


def test_verify_cli_with_audio_file_and_bfloat16(qwen2_audio_dir, tmp_path, capsys):
    path = tmp_path / "a.wav"
    soundfile.write(path, clip(2.0), 16000)
    assert main(["verify", str(qwen2_audio_dir), "--audio", str(path), "--dtype", "bfloat16", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "bfloat16" in out and "PASS" in out and "block   1" in out


def test_console_script_is_installed():
    exe = shutil.which("lalm-lens") or str(Path(sys.executable).with_name("lalm-lens"))
    result = subprocess.run([exe, "verify", "--help"], capture_output=True, text=True)
    assert result.returncode == 0 and "--dtype" in result.stdout


def test_verify_caches_only_the_states_it_compares(qwen2_audio_dir, monkeypatch):
    """A 32-layer encoder's attention patterns would take ~15 GiB per 30 s chunk: verify must not cache them."""
    from lalm_lens.model import HookedLALM

    cached: list[set[str]] = []
    original = HookedLALM.run_with_cache

    def spy(self, *args, **kwargs):
        logits, cache = original(self, *args, **kwargs)
        cached.append(set(cache.keys()))
        return logits, cache

    monkeypatch.setattr(HookedLALM, "run_with_cache", spy)
    report = lalm_lens.verify(str(qwen2_audio_dir), device="cpu")
    assert report.passed and len(cached) == 1
    expected = {f"blocks.{i}.hook_resid_pre" for i in range(2)} | {"blocks.1.hook_resid_post", "hook_audio_embeds"}
    expected |= {f"audio_encoder.blocks.{i}.hook_resid_post" for i in range(2)}
    assert cached[0] == expected
