"""Granite Speech rows through the checkpoint's `GraniteSpeechProcessor` and chat template.

The prompt is the user turn's text, `<|audio|>` before it when there is audio (as the
model card writes it); the processor expands that token into one per audio vector:
`ceil(frames / window) * (window / downsample)` for `frames = (samples // hop + 1) // 2`
stacked log-mel frames (20 ms each), i.e. 3 vectors per 0.3 s window for the released
models, `token_times` 0.1 s apart. A batch's features are computed together, as the
processor does (its log-mel of zero-padded waveforms is not the zero-padded log-mel), and
the processor's mask over audio vectors (`input_features_mask`) travels as
`feature_attention_mask`, the name every tool of the house reads.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch

from lalm_lens.inputs.builder import PromptBuilder, Row
from lalm_lens.inputs.hf_processor import HFProcessorPrompts
from lalm_lens.inputs.prepared import PreparedInput

PROCESSOR_MASK, HOUSE_MASK = "input_features_mask", "feature_attention_mask"


class GraniteSpeechPrompts(HFProcessorPrompts):
    def __init__(self, processor, config):
        features = processor.audio_processor
        PromptBuilder.__init__(self, processor.tokenizer, config, features.sampling_rate, processor)
        self.audio_token = processor.audio_token
        self.hop = features.melspec_kwargs["hop_length"]
        self.window = features.projector_window_size
        self.per_window = features.projector_window_size // features.projector_downsample_rate
        self.token_seconds = 2 * self.hop * self.window / self.per_window / self.sampling_rate

    def audio_tokens(self, n_samples: int) -> int:
        frames = (n_samples // self.hop + 1) // 2
        return math.ceil(frames / self.window) * self.per_window

    def render(self, prompt: str, with_audio: bool, answer_prefix: Optional[str], system: Optional[str], raw: bool) -> str:
        if raw:
            return super().render(prompt, with_audio, answer_prefix, system, raw)
        user = (self.audio_token if with_audio else "") + prompt
        messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": user}]
        return self.tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) + (answer_prefix or "")

    def build_row(self, wave, prompt, **kwargs) -> Row:
        row = super().build_row(wave, prompt, **kwargs)
        if PROCESSOR_MASK in row.features:
            row.features[HOUSE_MASK] = row.features.pop(PROCESSOR_MASK)
        return row

    def assemble(self, rows: list[Row], waves: list) -> PreparedInput:
        clips = [w for w in waves if w is not None]
        if len(clips) < 2:
            return super().assemble(rows, waves)
        for row in rows:
            row.features = {}
        inp = super().assemble(rows, waves)
        out = self.processor.audio_processor([torch.from_numpy(np.asarray(w, dtype=np.float32)) for w in clips])
        inp.tensors["input_features"] = out["input_features"]
        inp.tensors[HOUSE_MASK] = out[PROCESSOR_MASK]
        return inp
