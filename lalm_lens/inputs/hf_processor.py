"""Inputs built with a checkpoint's Hugging Face processor and chat template (Qwen2-Audio)."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Optional, Sequence

import torch

from lalm_lens.config import LALMConfig
from lalm_lens.inputs.audio import limit_duration, load_waveform
from lalm_lens.inputs.prepared import PreparedInput, batch_items
from lalm_lens.inputs.spans import text_spans, token_ranges

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "vocab.json", "tokenizer.model", "tekken.json")


def load_processor(folder: Path):
    """`AutoProcessor` for the folder, or None when it holds no tokenizer files."""
    if not any((Path(folder) / name).is_file() for name in TOKENIZER_FILES):
        return None
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(folder)


class HFProcessorInputs:
    """`prepare()` for processors that expand one audio token per audio vector."""

    def __init__(self, processor, config: LALMConfig):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.config = config
        features = processor.feature_extractor
        self.sampling_rate = features.sampling_rate
        self.max_seconds = features.n_samples / features.sampling_rate
        self.audio_token = processor.audio_token

    def render(self, prompt: str, with_audio: bool, answer_prefix: Optional[str], system: Optional[str], raw: bool) -> str:
        """The full text: chat template with the prompt as the user turn, then the answer prefix."""
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

    def prepare(
        self,
        audio=None,
        prompt=None,
        *,
        answer_prefix=None,
        sampling_rate: Optional[int] = None,
        options: Optional[Sequence[str]] = None,
        system: Optional[str] = None,
        raw: bool = False,
    ) -> PreparedInput:
        audios, prompts, prefixes = batch_items(audio, prompt, answer_prefix)
        waves = [
            limit_duration(load_waveform(a, sampling_rate, self.sampling_rate), self.sampling_rate, self.max_seconds, "this model")
            for a in audios
        ]
        texts = [self.render(p, bool(waves), a, system, raw) for p, a in zip(prompts, prefixes)]
        out = self.processor(
            text=texts, audio=waves or None, sampling_rate=self.sampling_rate, return_tensors="pt", padding=True
        )
        keys = ("input_ids", "attention_mask", "input_features", "feature_attention_mask")
        tensors = {k: out[k] for k in keys if k in out}
        ids = tensors["input_ids"]
        audio_id = self.config.audio_token_id
        spans = [
            self._spans(text, row, prompt_i, options, prefix, raw)
            for text, row, prompt_i, prefix in zip(texts, ids, prompts, prefixes)
        ]
        return PreparedInput(
            tensors=tensors,
            waveforms=waves or [None] * len(prompts),
            sampling_rate=self.sampling_rate,
            texts=texts,
            audio_positions=[(row == audio_id).nonzero()[:, 0] for row in ids],
            str_tokens=[self.tokenizer.convert_ids_to_tokens(row.tolist()) for row in ids],
            spans=spans,
            prepare_kwargs=dict(prompt=prompt, answer_prefix=answer_prefix, options=options, system=system, raw=raw),
            meta={"family": self.config.family, "options": list(options) if options else None},
        )

    def _spans(self, text: str, row: torch.Tensor, prompt: str, options, answer_prefix, raw: bool) -> dict:
        """Token ranges of the named pieces, located through the tokenizer's offsets."""
        if raw:
            return {}
        n_audio = int((row == self.config.audio_token_id).sum())
        expanded = text.replace(self.audio_token, self.audio_token * n_audio, 1) if n_audio else text
        enc = self.tokenizer(expanded, return_offsets_mapping=True, add_special_tokens=False)
        n = len(enc["input_ids"])
        shift = row.shape[0] - n if self.tokenizer.padding_side == "left" else 0
        if row[shift : shift + n].tolist() != enc["input_ids"]:
            warnings.warn("could not align the tokenizer's offsets with the processor's ids; no token spans recorded")
            return {}
        if raw:
            return {}
        ranges = token_ranges(enc["offset_mapping"], text_spans(expanded, prompt, options, answer_prefix))
        return {name: (a + shift, b + shift) for name, (a, b) in ranges.items()}
