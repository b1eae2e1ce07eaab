"""A tiny random Music Flamingo checkpoint (real `MusicFlamingoConfig`, `save_pretrained`) with its processor."""

from pathlib import Path

import torch

from tests.tiny_models import PROMPT_WORDS, scale_init

AUDIO_TOKEN_ID = 255
TAGS = ("<|sound_bos|>", "<|sound_eos|>")


def music_flamingo_processor():
    """A `MusicFlamingoProcessor` with a word-level tokenizer; `<sound>` gets `AUDIO_TOKEN_ID`."""
    from transformers import MusicFlamingoProcessor, WhisperFeatureExtractor

    from lalm_lens.toy import AF3_CHAT_TEMPLATE, AF3_SPECIALS, TEMPLATE_WORDS, word_tokenizer

    tokenizer = word_tokenizer(list(TEMPLATE_WORDS) + list(PROMPT_WORDS), AF3_SPECIALS + TAGS, 256,
                               {"<sound>": AUDIO_TOKEN_ID})
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.eos_token = "<|im_end|>"
    features = WhisperFeatureExtractor(feature_size=128, return_attention_mask=True)
    return MusicFlamingoProcessor(features, tokenizer, chat_template=AF3_CHAT_TEMPLATE)


def music_flamingo_config(processor):
    from transformers import MusicFlamingoConfig

    audio = dict(model_type="audioflamingo3_encoder", hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                 intermediate_size=128, num_mel_bins=128, max_source_positions=1500)
    text = dict(model_type="qwen2", vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, rope_parameters=dict(rope_type="default", rope_theta=1e6))
    return MusicFlamingoConfig(audio_config=audio, text_config=text, audio_token_id=AUDIO_TOKEN_ID,
                               audio_bos_token_id=processor.audio_bos_token_id,
                               audio_eos_token_id=processor.audio_eos_token_id)


def save_music_flamingo(folder: Path, seed: int = 0) -> Path:
    from transformers import MusicFlamingoForConditionalGeneration

    processor = music_flamingo_processor()
    torch.manual_seed(seed)
    model = MusicFlamingoForConditionalGeneration(music_flamingo_config(processor)).eval()
    scale_init(model, seed=seed)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return Path(folder)
