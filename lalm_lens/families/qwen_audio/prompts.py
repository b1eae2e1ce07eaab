"""Qwen-Audio (v1) inputs: its tiktoken vocabulary (read with `tiktoken`, no remote code) and prompts.

Special tokens follow the ordinary ranks in the original's order: `<|endoftext|>`,
`<|im_start|>`, `<|im_end|>`, 205 `<|extra_i|>`, then the audio tokens (the pad
`[[[AUDIO:modality]]]`, task/language/timestamp tags, ..., `<audio>`, `</audio>`).
An audio clip becomes `<audio>` + pad x n + `</audio>` (n = 25 per second, at most
750); the model writes [begin vector, n audio vectors, end vector] over all of them.
Chat checkpoints (`chat_format: chatml`) get
`<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n<|im_start|>user\\nAudio 1:<audio>…</audio>\\n{prompt}<|im_end|>\\n<|im_start|>assistant\\n{answer_prefix}`;
base checkpoints (`raw`) get `<audio>…</audio>{prompt}{answer_prefix}`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch

from lalm_lens.config import LALMConfig
from lalm_lens.families.qwen_audio.tokenizer import VOCAB_FILE, QwenAudioTokenizer
from lalm_lens.inputs.builder import PromptBuilder, Row
from lalm_lens.inputs.spans import latin, text_spans, token_ranges

MAX_SECONDS = 30.0
HOP = 160


class QwenAudioPrompts(PromptBuilder):
    """ChatML rows for chat checkpoints, the raw format for base ones; the clip's span is
    `<audio>` + pad x n + `</audio>`, all overwritten with [begin vector, n audio vectors, end vector]."""

    def __init__(self, tokenizer: QwenAudioTokenizer, feature_extractor, config: LALMConfig, chat: bool = True):
        super().__init__(tokenizer, config, feature_extractor.sampling_rate)
        self.feature_extractor = feature_extractor
        self.chat = chat

    @classmethod
    def from_folder(cls, folder: Path, config: LALMConfig) -> Optional["QwenAudioPrompts"]:
        from transformers import WhisperFeatureExtractor

        if not (Path(folder) / VOCAB_FILE).is_file():
            return None
        gen = Path(folder) / "generation_config.json"
        chat = json.loads(gen.read_text()).get("chat_format", "chatml") == "chatml" if gen.is_file() else True
        features = WhisperFeatureExtractor(feature_size=config.encoder.n_mels)
        return cls(QwenAudioTokenizer(Path(folder) / VOCAB_FILE), features, config, chat)

    def frames(self, n_samples: int) -> int:
        return min(n_samples, int(MAX_SECONDS * self.sampling_rate)) // HOP

    def audio_tokens(self, n_samples: int) -> int:
        """The tags plus the clip's vectors: mel frames -> stride-2 conv -> AvgPool(2) (25 per second)."""
        t = (self.frames(n_samples) - 1) // 2 + 1
        n = (t - 2) // 2 + 1
        return n + 2 if n > 0 else 0

    def token_times(self, n_samples: int) -> list[float]:
        """The begin tag at 0, each vector at its 40 ms step, the end tag at the clip's end."""
        n = self.audio_tokens(n_samples) - 2
        return [0.0] + [k * self.token_seconds for k in range(n)] + [n_samples / self.sampling_rate]

    def pieces(self, prompt: str, prefix: Optional[str], system: Optional[str], with_audio: bool) -> list:
        """Text and id pieces; the string "AUDIO" stands for the clip's span."""
        sp = self.tokenizer.special
        if not self.chat:
            return (["AUDIO"] if with_audio else []) + [prompt + (prefix or "")]
        query = (["Audio 1:", "AUDIO", "\n" + prompt] if with_audio else [prompt])
        return ([sp["<|im_start|>"]], "system", "\n", system or "You are a helpful assistant.", [sp["<|im_end|>"]],
                "\n", [sp["<|im_start|>"]], "user", "\n", *query, [sp["<|im_end|>"]], "\n", [sp["<|im_start|>"]],
                "assistant", "\n", prefix or "")

    def build_row(self, wave: Optional[np.ndarray], prompt: str, *, answer_prefix, options: Optional[Sequence[str]],
                  system, raw: bool) -> Row:
        if raw:
            raise ValueError("raw prompts are not supported for Qwen-Audio; the base model's format is used "
                             "automatically when the checkpoint is not a chat model")
        sp = self.tokenizer.special
        ids, offsets, buf = [], [], b""
        for piece in self.pieces(prompt, answer_prefix, system, wave is not None):
            if piece == "AUDIO":
                piece = [sp["<audio>"]] + [sp["[[[AUDIO:modality]]]"]] * (self.audio_tokens(len(wave)) - 2) + [sp["</audio>"]]
            if isinstance(piece, list):
                ids += piece
                offsets += [(len(buf), len(buf))] * len(piece)
                buf += b"\x00"  # keeps the text around special tokens apart
                continue
            for tok in self.tokenizer.encode(piece):
                token = self.tokenizer.decoder[tok]
                ids.append(tok)
                offsets.append((len(buf), len(buf) + len(token)))
                buf += token
        found = text_spans(buf.decode("latin-1"), latin(prompt), [latin(o) for o in options] if options else None,
                           latin(answer_prefix))
        features = {}
        if wave is not None:
            feats = self.feature_extractor([wave], sampling_rate=self.sampling_rate, return_tensors="pt").input_features
            mask = (torch.arange(feats.shape[-1])[None] < self.frames(len(wave))).long()
            features = {"input_features": feats, "feature_attention_mask": mask}
        times = self.token_times(len(wave)) if wave is not None else None
        return Row(ids, self.tokenizer.decode(ids), token_ranges(offsets, found), features, times)
