"""Rows built by a checkpoint's Hugging Face processor and chat template (Qwen2-Audio, Audio Flamingo 3)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from lalm_lens.inputs.builder import PromptBuilder, Row
from lalm_lens.inputs.spans import text_spans, token_ranges

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "tekken.json")


def load_processor(folder: Path):
    """`AutoProcessor` for the folder, or None when it holds no tokenizer files."""
    if not any((Path(folder) / name).is_file() for name in TOKENIZER_FILES):
        return None
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(folder)


def conv_tokens(n_frames: int, pool: int = 2) -> int:
    """Audio tokens of `n_frames` mel frames: stride-2 conv, then AvgPool(pool)."""
    after_conv = (n_frames - 1) // 2 + 1
    return (after_conv - pool) // pool + 1


class HFProcessorPrompts(PromptBuilder):
    """Processors that expand one audio token per audio vector and return the features with a frame mask."""

    feature_keys = ("input_features", "feature_attention_mask", "input_features_mask")

    def __init__(self, processor, config, window_seconds: Optional[float] = None):
        features = processor.feature_extractor
        super().__init__(processor.tokenizer, config, features.sampling_rate, processor)
        self.audio_token = processor.audio_token
        self.hop = features.hop_length
        self.window_samples = int((window_seconds or features.n_samples / features.sampling_rate) * self.sampling_rate)

    def audio_tokens(self, n_samples: int) -> int:
        """Per 30 s window (the last one partial): mel frames -> conv -> pool."""
        full, rest = divmod(n_samples, self.window_samples)
        per_full = conv_tokens(self.window_samples // self.hop)
        return full * per_full + (conv_tokens(-(-rest // self.hop)) if rest else 0)

    def render(self, prompt: str, with_audio: bool, answer_prefix: Optional[str], system: Optional[str], raw: bool) -> str:
        """The full text: the chat template with the prompt as the user turn, then the answer prefix."""
        if raw:
            if with_audio and self.audio_token not in prompt:
                raise ValueError(f"audio was given but the raw prompt has no audio placeholder {self.audio_token!r}")
            if not with_audio and self.audio_token in prompt:
                raise ValueError(f"the raw prompt has an audio placeholder {self.audio_token!r} but no audio was given")
            return prompt + (answer_prefix or "")
        content = ([{"type": "audio", "audio": "<waveform>"}] if with_audio else []) + [{"type": "text", "text": prompt}]
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": content}]
        text = self.processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
        return text + (answer_prefix or "")

    def build_row(self, wave: Optional[np.ndarray], prompt: str, *, answer_prefix, options: Optional[Sequence[str]],
                  system, raw: bool) -> Row:
        text = self.render(prompt, wave is not None, answer_prefix, system, raw)
        out = self.processor(text=[text], audio=[wave] if wave is not None else None, sampling_rate=self.sampling_rate,
                             return_tensors="pt")
        ids = out["input_ids"][0].tolist()
        features = {k: out[k] for k in self.feature_keys if k in out}
        spans = {} if raw else self.spans(text, ids, prompt, options, answer_prefix)
        times = self.token_times(len(wave)) if wave is not None else None
        return Row(ids, text, spans, features, times)

    def expand_audio(self, n_audio: int) -> str:
        """The text the processor puts in place of the audio placeholder (Music Flamingo adds tags)."""
        return self.audio_token * n_audio

    def spans(self, text: str, ids: list[int], prompt: str, options, answer_prefix) -> dict:
        """Token ranges of the named pieces, located through the tokenizer's offsets."""
        n_audio = sum(i == self.config.audio_token_id for i in ids)
        expanded = text.replace(self.audio_token, self.expand_audio(n_audio), 1) if n_audio else text
        enc = self.tokenizer(expanded, return_offsets_mapping=True, add_special_tokens=False)
        if enc["input_ids"] != ids:
            warnings.warn("could not align the tokenizer's offsets with the processor's token ids; no token spans "
                          "recorded (every text position falls in the 'template' group)")
            return {}
        return token_ranges(enc["offset_mapping"], text_spans(expanded, prompt, options, answer_prefix))
