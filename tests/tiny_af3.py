"""A tiny random Audio Flamingo 3 checkpoint (real `AudioFlamingo3Config`, `save_pretrained`) with a processor."""

from pathlib import Path

import torch

from tests.tiny_models import PROMPT_WORDS, scale_init

AUDIO_TOKEN_ID = 255


def af3_config():
    from transformers import AudioFlamingo3Config

    audio = dict(model_type="audioflamingo3_encoder", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=128, num_mel_bins=128, max_source_positions=1500)
    text = dict(model_type="qwen2", vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, rope_parameters=dict(rope_type="default", rope_theta=1e6))
    return AudioFlamingo3Config(audio_config=audio, text_config=text, audio_token_id=AUDIO_TOKEN_ID)


def save_af3(folder: Path, seed: int = 0) -> Path:
    from transformers import AudioFlamingo3ForConditionalGeneration

    from lalm_lens.toy import audio_flamingo3_processor

    torch.manual_seed(seed)
    model = AudioFlamingo3ForConditionalGeneration(af3_config()).eval()
    scale_init(model, seed=seed)
    model.save_pretrained(folder)
    audio_flamingo3_processor(PROMPT_WORDS, vocab_size=256, audio_token_id=AUDIO_TOKEN_ID).save_pretrained(folder)
    return Path(folder)
