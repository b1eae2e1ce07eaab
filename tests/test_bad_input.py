"""Bad input gets a clear error or a stated, tested correction — never a silent wrong answer."""

import json
import shutil

import numpy as np
import pytest
import soundfile
import torch
import torchaudio.functional as AF

from lalm_lens import AudioError, HookedLALM
from lalm_lens.inputs.audio import load_waveform
from weight_conversion import UnknownFamilyError
from weight_conversion.base import CheckpointError
from tests.tiny_models import PROMPT, clip


# ---------------------------------------------------------------- prompts and placeholders
def test_audio_without_placeholder_in_raw_prompt(qwen2_audio):
    with pytest.raises(ValueError, match="no audio placeholder"):
        qwen2_audio.prepare(clip(1.0), "<|im_start|>user\nhello<|im_end|>", raw=True, sampling_rate=16000)


def test_audio_features_without_placeholder_tokens(qwen2_audio):
    inp = qwen2_audio.prepare(clip(1.0), PROMPT, sampling_rate=16000)
    text_only = qwen2_audio.prepare(None, PROMPT)
    with pytest.raises(ValueError, match="no audio placeholder"):
        qwen2_audio(input_ids=text_only.input_ids, input_features=inp["input_features"],
                    feature_attention_mask=inp["feature_attention_mask"])


def test_placeholder_count_that_does_not_match_the_audio(qwen2_audio):
    inp = qwen2_audio.prepare(clip(2.0), PROMPT, sampling_rate=16000)
    ids = inp.input_ids.clone()
    first = int(inp.audio_positions[0][0])
    ids = torch.cat([ids[:, :first], ids[:, first + 3:]], dim=1)  # drop three placeholders
    with pytest.raises(ValueError, match=r"\d+ audio placeholder token\(s\) but the audio gives \d+ vectors"):
        qwen2_audio(input_ids=ids, input_features=inp["input_features"],
                    feature_attention_mask=inp["feature_attention_mask"])


def test_unexpanded_placeholder_is_refused_with_a_hint(qwen2_audio):
    inp = qwen2_audio.prepare(clip(2.0), PROMPT, sampling_rate=16000)
    keep = torch.ones(inp.seq_len, dtype=torch.bool)
    keep[inp.audio_positions[0][1:]] = False
    with pytest.raises(ValueError, match="unexpanded placeholder"):
        qwen2_audio(input_ids=inp.input_ids[:, keep], input_features=inp["input_features"],
                    feature_attention_mask=inp["feature_attention_mask"])


def test_placeholders_without_audio(qwen2_audio):
    inp = qwen2_audio.prepare(clip(1.0), PROMPT, sampling_rate=16000)
    with pytest.raises(ValueError, match="no input_features"):
        qwen2_audio(input_ids=inp.input_ids)


def test_unknown_model_input_name(qwen2_audio):
    inp = qwen2_audio.prepare(None, PROMPT)
    with pytest.raises(TypeError, match="unexpected model input"):
        qwen2_audio(input_ids=inp.input_ids, pixel_values=inp.input_ids)


# ---------------------------------------------------------------- audio
def test_audio_over_30_seconds_is_truncated_with_a_warning(qwen2_audio):
    long = clip(31.0)
    with pytest.warns(UserWarning, match="truncated to the first 30 s"):
        inp = qwen2_audio.prepare(long, PROMPT, sampling_rate=16000)
    assert len(inp.waveform) == 30 * 16000
    assert inp["feature_attention_mask"].sum().item() == 3000
    assert len(inp.audio_positions[0]) == 750


def test_other_sample_rate_is_resampled(qwen2_audio):
    wave44 = clip(2.0, rate=44100)
    inp = qwen2_audio.prepare(wave44, PROMPT, sampling_rate=44100)
    expected = AF.resample(torch.from_numpy(wave44), 44100, 16000).numpy()
    assert np.allclose(inp.waveform, expected)
    assert len(inp.audio_positions[0]) == 50  # 2 s at 25 tokens per second


def test_stereo_is_downmixed_with_a_warning(qwen2_audio, tmp_path):
    left, right = clip(1.0, seed=1), clip(1.0, seed=2)
    with pytest.warns(UserWarning, match="downmixed to mono"):
        inp = qwen2_audio.prepare(np.stack([left, right]), PROMPT, sampling_rate=16000)
    assert np.allclose(inp.waveform, (left + right) / 2)
    path = tmp_path / "stereo.wav"
    soundfile.write(path, np.stack([left, right], axis=1), 16000, subtype="FLOAT")
    with pytest.warns(UserWarning, match="downmixed"):
        from_file = qwen2_audio.prepare(str(path), PROMPT)
    assert np.allclose(from_file.waveform, (left + right) / 2, atol=1e-6)


def test_file_at_another_rate_is_resampled(tmp_path):
    path = tmp_path / "a.wav"
    soundfile.write(path, clip(1.0, rate=8000), 8000, subtype="FLOAT")
    assert load_waveform(str(path), None, 16000).shape == (16000,)


def test_array_without_sampling_rate_warns():
    with pytest.warns(UserWarning, match="assuming the model's 16000 Hz"):
        load_waveform(clip(0.5), None, 16000)


@pytest.mark.parametrize("bad, message", [
    (np.zeros(0, dtype=np.float32), "empty"),
    (np.array([0.0, np.nan, 0.1], dtype=np.float32), "NaN"),
    (np.array([0.0, np.inf], dtype=np.float32), "NaN or infinite"),
    (np.zeros((2, 3, 4), dtype=np.float32), "1-D"),
])
def test_unusable_audio_raises(qwen2_audio, bad, message):
    with pytest.raises(AudioError, match=message):
        qwen2_audio.prepare(bad, PROMPT, sampling_rate=16000)


def test_missing_audio_file(qwen2_audio, tmp_path):
    with pytest.raises(AudioError, match="not found"):
        qwen2_audio.prepare(str(tmp_path / "nope.wav"), PROMPT)


def test_int16_audio_is_scaled():
    wave = (clip(0.5) * 32767).astype(np.int16)
    assert np.allclose(load_waveform(wave, 16000, 16000), wave / 32768.0, atol=1e-6)


# ---------------------------------------------------------------- checkpoints
def copy_checkpoint(src, dst):
    shutil.copytree(src, dst)
    return dst


def test_unknown_family(qwen2_audio_dir, tmp_path):
    folder = copy_checkpoint(qwen2_audio_dir, tmp_path / "m")
    config = json.loads((folder / "config.json").read_text())
    config["model_type"] = "whisper_llama_9000"
    (folder / "config.json").write_text(json.dumps(config))
    with pytest.raises(UnknownFamilyError, match="unknown model family 'whisper_llama_9000'.*qwen2_audio"):
        HookedLALM.from_pretrained(folder, device="cpu")


def test_missing_shard(qwen2_audio_dir, tmp_path):
    from transformers import Qwen2AudioForConditionalGeneration

    folder = tmp_path / "sharded"
    Qwen2AudioForConditionalGeneration.from_pretrained(qwen2_audio_dir).save_pretrained(folder, max_shard_size="100KB")
    shards = sorted(folder.glob("model-*.safetensors"))
    assert len(shards) > 1
    assert HookedLALM.from_pretrained(folder, device="cpu") is not None  # complete: loads
    shards[1].unlink()
    with pytest.raises(CheckpointError, match=f"missing from .*{shards[1].name}"):
        HookedLALM.from_pretrained(folder, device="cpu")


def test_missing_config_and_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="no config.json"):
        HookedLALM.from_pretrained(tmp_path, device="cpu")
    with pytest.raises(CheckpointError, match="not a hub id"):
        HookedLALM.from_pretrained(str(tmp_path / "nope"), device="cpu")


def test_missing_and_unknown_weights_are_named(qwen2_audio_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    folder = copy_checkpoint(qwen2_audio_dir, tmp_path / "m")
    weights = load_file(folder / "model.safetensors")
    weights.pop("language_model.model.layers.1.mlp.up_proj.weight")
    save_file(weights, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="blocks.1.mlp.W_in"):
        HookedLALM.from_pretrained(folder, device="cpu")
    weights["language_model.model.layers.1.mlp.up_proj.weight"] = torch.zeros(128, 64)
    weights["language_model.model.layers.1.mlp.extra_gate.weight"] = torch.zeros(3)
    save_file(weights, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="extra_gate"):
        HookedLALM.from_pretrained(folder, device="cpu")
    weights.pop("language_model.model.layers.1.mlp.extra_gate.weight")
    weights["language_model.model.layers.1.mlp.up_proj.weight"] = torch.zeros(100, 64)
    save_file(weights, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=r"up_proj.weight' has shape \(100, 64\)"):
        HookedLALM.from_pretrained(folder, device="cpu")


def test_folder_without_processor_loads_and_prepare_says_why(qwen2_audio_dir, qwen2_audio, tmp_path):
    folder = tmp_path / "bare"
    folder.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(qwen2_audio_dir / name, folder / name)
    model = HookedLALM.from_pretrained(folder, device="cpu")
    inp = qwen2_audio.prepare(clip(1.0), PROMPT, sampling_rate=16000)
    with torch.no_grad():
        assert torch.allclose(model(inp), qwen2_audio(inp), atol=1e-6)
    with pytest.raises(RuntimeError, match="no processor"):
        model.prepare(clip(1.0), PROMPT)


def test_transformers5_key_layout_loads(qwen2_audio_dir, qwen2_audio, tmp_path):
    """transformers >= 5.13 may save `model.language_model.*`, `model.audio_tower.*`, `lm_head.*`."""
    from safetensors.torch import load_file, save_file

    folder = copy_checkpoint(qwen2_audio_dir, tmp_path / "m")
    renames = {"language_model.model.": "model.language_model.", "language_model.lm_head.": "lm_head.",
               "audio_tower.": "model.audio_tower.", "multi_modal_projector.": "model.multi_modal_projector."}
    weights = load_file(folder / "model.safetensors")
    renamed = {}
    for key, value in weights.items():
        for old, new in renames.items():
            if key.startswith(old):
                key = new + key[len(old):]
                break
        renamed[key] = value
    save_file(renamed, folder / "model.safetensors")
    model = HookedLALM.from_pretrained(folder, device="cpu")
    for name, p in qwen2_audio.named_parameters():
        assert torch.equal(p, model.get_parameter(name)), name


@pytest.mark.parametrize("case, message", [
    ("nan", r"model.safetensors holds NaN or infinite values in 'language_model.model.layers.0.mlp.up_proj.weight'"),
    ("inf", r"model.safetensors holds NaN or infinite values in 'language_model.model.layers.0.mlp.up_proj.weight'"),
    ("int", r"model.safetensors holds 'language_model.model.layers.0.mlp.up_proj.weight' as torch.int32"),
])
def test_bad_weight_values_are_named(qwen2_audio_dir, tmp_path, case, message):
    from safetensors.torch import load_file, save_file

    folder = copy_checkpoint(qwen2_audio_dir, tmp_path / "m")
    weights = load_file(folder / "model.safetensors")
    key = "language_model.model.layers.0.mlp.up_proj.weight"
    if case in ("nan", "inf"):
        weights[key][3, 5] = float(case)
    else:
        weights[key] = torch.zeros(weights[key].shape, dtype=torch.int32)
    save_file(weights, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match=message):
        HookedLALM.from_pretrained(folder, device="cpu")


def test_unreadable_safetensors_and_config_name_the_file(qwen2_audio_dir, tmp_path):
    folder = copy_checkpoint(qwen2_audio_dir, tmp_path / "m")
    (folder / "model.safetensors").write_bytes(b"\xff" * 64)
    with pytest.raises(CheckpointError, match=r"model.safetensors is not a readable safetensors file"):
        HookedLALM.from_pretrained(folder, device="cpu")
    (folder / "config.json").write_text('{"model_type": "qwen2_au')
    with pytest.raises(CheckpointError, match=r"config.json is not readable JSON"):
        HookedLALM.from_pretrained(folder, device="cpu")


def test_options_of_another_family_are_refused(qwen2_audio_dir):
    with pytest.raises(TypeError, match="llm_path do\\(es\\) not apply to qwen2_audio"):
        HookedLALM.from_pretrained(qwen2_audio_dir, device="cpu", llm_path="x")


# ---------------------------------------------------------------- audio edge cases
def test_a_clip_shorter_than_one_audio_token_says_the_minimum(qwen2_audio):
    with pytest.raises(AudioError, match=r"lasts 10.0 ms; qwen2_audio needs at least 20.1 ms"):
        qwen2_audio.prepare(clip(0.01), PROMPT, sampling_rate=16000)
    assert len(qwen2_audio.prepare(clip(0.0201), PROMPT, sampling_rate=16000).audio_positions[0]) == 1


def test_a_file_that_is_not_audio(qwen2_audio, tmp_path):
    path = tmp_path / "notes.wav"
    path.write_text("hello")
    with pytest.raises(AudioError, match="notes.wav is not a readable audio file"):
        qwen2_audio.prepare(str(path), PROMPT)


@pytest.mark.parametrize("rate", [0, -16000])
def test_a_sampling_rate_that_is_not_positive(rate):
    with pytest.raises(AudioError, match="sampling_rate must be a positive"):
        load_waveform(clip(0.5), rate, 16000)


def test_int16_scale_floats_warn_and_bfloat16_is_read():
    with pytest.warns(UserWarning, match="far outside \\[-1, 1\\]"):
        load_waveform(clip(0.5) * 32767, 16000, 16000)
    wave = torch.from_numpy(clip(0.5)).to(torch.bfloat16)
    assert np.allclose(load_waveform(wave, 16000, 16000), wave.float().numpy())
