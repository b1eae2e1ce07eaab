"""A tiny Voxtral Realtime checkpoint: real config classes, `save_pretrained`, a streaming tekken processor."""

import json
from pathlib import Path

import torch

from tests.tiny_models import scale_init

STREAMING_PAD, STREAMING_WORD = 35, 36
N_LEFT = 32  # as released: 32 tokens (2.56 s) of silence before the clip
DELAY_MS = 480.0  # 6 tokens of 80 ms, the released default


def realtime_config(encoder_window: int = 16, lm_window: int = 12):
    """Windows far below the released 750 / 8192, so a 3 s clip (~90 steps, ~360 encoder frames) spans many."""
    from transformers import VoxtralRealtimeConfig

    audio = dict(model_type="voxtral_realtime_encoder", hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                 num_attention_heads=4, head_dim=16, num_mel_bins=128, sliding_window=encoder_window)
    text = dict(model_type="voxtral_realtime_text", vocab_size=1280, hidden_size=64, intermediate_size=128,
                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=24,
                sliding_window=lm_window)
    return VoxtralRealtimeConfig(audio_config=audio, text_config=text)


def realtime_processor(folder: Path):
    """`VoxtralRealtimeProcessor`: tekken.json in streaming mode + `VoxtralRealtimeFeatureExtractor`."""
    from transformers import AutoProcessor, VoxtralRealtimeFeatureExtractor

    from lalm_lens.toy import tekken_json

    tekken = tekken_json((b" t", b"he", b" the", b"er", b"in", b" s", b"is", b" is"))
    names = {STREAMING_PAD: "[STREAMING_PAD]", STREAMING_WORD: "[STREAMING_WORD]"}
    for special in tekken["special_tokens"]:
        special["token_str"] = names.get(special["rank"], special["token_str"])
    tekken["audio"] = {"sampling_rate": 16000, "frame_rate": 12.5, "transcription_format": "streaming",
                       "transcription_delay_ms": DELAY_MS, "streaming_look_ahead_ms": 2.5,
                       "streaming_look_back_ms": 52.5, "streaming_n_left_pad_tokens": N_LEFT,
                       "audio_encoding_config": {"num_mel_bins": 128, "hop_length": 160, "window_size": 400}}
    (folder / "tekken.json").write_text(json.dumps(tekken))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "MistralCommonBackend"}))
    VoxtralRealtimeFeatureExtractor().save_pretrained(folder)
    (folder / "processor_config.json").write_text(json.dumps({"processor_class": "VoxtralRealtimeProcessor"}))
    return AutoProcessor.from_pretrained(folder)


def save_realtime(folder: Path, seed: int = 0, **windows) -> Path:
    from transformers import VoxtralRealtimeForConditionalGeneration

    folder = Path(folder)
    torch.manual_seed(seed)
    model = VoxtralRealtimeForConditionalGeneration(realtime_config(**windows)).eval()
    scale_init(model, seed=seed)
    with torch.no_grad():  # scale_init draws anything named "embed" at std 1; the conv stem ("embedder") wants 1/sqrt(fan_in)
        for conv in (model.model.audio_tower.embedder.conv1, model.model.audio_tower.embedder.conv2):
            conv.weight.normal_(0, conv.weight[0].numel() ** -0.5, generator=torch.Generator().manual_seed(seed))
    model.save_pretrained(folder)
    realtime_processor(folder)
    return folder
