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

import base64
import unicodedata
from pathlib import Path
from typing import Optional, Sequence

import torch

from lalm_lens.config import LALMConfig
from lalm_lens.inputs.audio import limit_duration, load_waveform
from lalm_lens.inputs.prepared import PreparedInput, batch_items
from lalm_lens.inputs.spans import text_spans, token_ranges

PAT_STR = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"""
           r"""\s*[\r\n]+|\s+(?!\S)|\s+""")
LANGUAGES = ("en", "zh", "de", "es", "ko", "fr", "ja", "it")
AUDIO_SPECIALS = (
    "[[[AUDIO:modality]]]", "<|startoftranscript|>", "<|startofanalysis|>", "<|translate|>", "<|transcribe|>",
    "<|caption|>", "<|keyword|>", "<|unknown|>", *[f"<|{lang}|>" for lang in LANGUAGES], "<|zh_tr|>",
    "<|notimestamps|>", "<|sil|>", "<|timestamps|>", *[f"<|{i * 0.01:.2f}|>" for i in range(3001)],
    "<|caption_audiocaps|>", "<|caption_clotho|>", "<|audioset_ontology|>", "<|caption_plain|>", "<|itn|>",
    "<|wo_itn|>", "<|startofentityvalue|>", "<|endofentityvalue|>", "<|startofentitytype|>", "<|endofentitytype|>",
    "<|named_entity_recognition|>", "<|audio_grounding|>", "<|startofword|>", "<|endofword|>", "<|delim|>",
    "<|emotion_recognition|>", "<|music_description|>", "<|note_analysis|>", "<|pitch|>",
    *[f"<|midi_pitch_{i}|>" for i in range(128)], "<|velocity|>", *[f"<|midi_velocity_{i}|>" for i in range(128)],
    "<|sonic|>", "<|instrument|>", "<|speaker_meta|>", "<|song_meta|>", "<|question|>", "<|answer|>", "<|choice|>",
    "<|scene|>", "<|event|>", "<|vocal_classification|>", "<|speech_understanding|>", "<|scenario|>", "<|action|>",
    "<|entities|>", "<|speech_edit|>", "<audio>", "</audio>",
)
SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", *[f"<|extra_{i}|>" for i in range(205)], *AUDIO_SPECIALS)
VOCAB_FILE = "qwen.tiktoken"
MAX_SECONDS = 30.0


class QwenAudioTokenizer:
    """The Qwen(-Audio) v1 tokenizer on `tiktoken`: `qwen.tiktoken` lines are `base64(bytes) rank`."""

    def __init__(self, vocab_file: Path):
        import tiktoken

        ranks = {}
        for line in Path(vocab_file).read_bytes().splitlines():
            if line:
                token, rank = line.split()
                ranks[base64.b64decode(token)] = int(rank)
        self.special = {tok: len(ranks) + i for i, tok in enumerate(SPECIALS)}
        self.encoding = tiktoken.Encoding("Qwen", pat_str=PAT_STR, mergeable_ranks=ranks, special_tokens=self.special)
        self.decoder = {v: k for k, v in ranks.items()}
        self.decoder.update({v: k.encode() for k, v in self.special.items()})
        self.all_special_ids = sorted(self.special.values())
        self.eos_token_id = self.pad_token_id = self.special["<|endoftext|>"]
        self.padding_side = "left"

    def __len__(self) -> int:
        return self.encoding.n_vocab

    def encode(self, text: str, add_special_tokens: bool = False, allowed_special="all") -> list[int]:
        return self.encoding.encode(unicodedata.normalize("NFC", text), allowed_special=allowed_special,
                                    disallowed_special=())

    def __call__(self, text, add_special_tokens: bool = False, **_):
        texts = text if isinstance(text, list) else [text]
        return {"input_ids": [self.encode(t) for t in texts] if isinstance(text, list) else self.encode(text)}

    def convert_tokens_to_ids(self, token: str) -> int:
        return self.special[token] if token in self.special else self.encoding.encode_single_token(token.encode())

    def convert_ids_to_tokens(self, ids) -> list[str]:
        return [self.decoder[int(i)].decode("utf-8", errors="replace") if int(i) in self.decoder else f"<|id_{i}|>"
                for i in ids]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        ids = [int(i) for i in ids if not (skip_special_tokens and int(i) >= self.eos_token_id)]
        return b"".join(self.decoder.get(i, b"") for i in ids).decode("utf-8", errors="replace")

    def batch_decode(self, rows, skip_special_tokens: bool = False) -> list[str]:
        return [self.decode(r.tolist() if isinstance(r, torch.Tensor) else r, skip_special_tokens) for r in rows]

    def token_bytes(self, ids) -> list[bytes]:
        return [b"" if int(i) >= self.eos_token_id else self.decoder[int(i)] for i in ids]


def audio_token_count(n_samples: int, rate: int = 16000) -> int:
    """Audio vectors of a clip: mel frames -> stride-2 conv -> AvgPool(2) (25 per second, at most 750)."""
    mel = min(n_samples, int(MAX_SECONDS * rate)) // 160
    t = (mel - 1) // 2 + 1
    return (t - 2) // 2 + 1


class QwenAudioInputs:
    def __init__(self, tokenizer: QwenAudioTokenizer, feature_extractor, config: LALMConfig, chat: bool = True):
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor
        self.processor = None
        self.config = config
        self.chat = chat
        self.sampling_rate = feature_extractor.sampling_rate

    @classmethod
    def from_folder(cls, folder: Path, config: LALMConfig) -> Optional["QwenAudioInputs"]:
        import json

        from transformers import WhisperFeatureExtractor

        if not (Path(folder) / VOCAB_FILE).is_file():
            return None
        gen = Path(folder) / "generation_config.json"
        chat = json.loads(gen.read_text()).get("chat_format", "chatml") == "chatml" if gen.is_file() else True
        features = WhisperFeatureExtractor(feature_size=config.encoder.n_mels)
        return cls(QwenAudioTokenizer(Path(folder) / VOCAB_FILE), features, config, chat)

    def _pieces(self, prompt: str, prefix: Optional[str], system: Optional[str], with_audio: bool) -> list:
        """Text and id pieces; the string "AUDIO" stands for the clip's span."""
        sp = self.tokenizer.special
        if not self.chat:
            return (["AUDIO"] if with_audio else []) + [prompt + (prefix or "")]
        query = (["Audio 1:", "AUDIO", "\n" + prompt] if with_audio else [prompt])
        return ([sp["<|im_start|>"]], "system", "\n", system or "You are a helpful assistant.", [sp["<|im_end|>"]],
                "\n", [sp["<|im_start|>"]], "user", "\n", *query, [sp["<|im_end|>"]], "\n", [sp["<|im_start|>"]],
                "assistant", "\n", prefix or "")

    def prepare(self, audio=None, prompt=None, *, answer_prefix=None, sampling_rate: Optional[int] = None,
                options: Optional[Sequence[str]] = None, system: Optional[str] = None, raw: bool = False) -> PreparedInput:
        if raw:
            raise ValueError("raw prompts are not supported for Qwen-Audio; the base model's format is used "
                             "automatically when the checkpoint is not a chat model")
        audios, prompts, prefixes = batch_items(audio, prompt, answer_prefix)
        waves = [limit_duration(load_waveform(a, sampling_rate, self.sampling_rate), self.sampling_rate, MAX_SECONDS,
                                "Qwen-Audio") for a in audios]
        sp = self.tokenizer.special
        rows, spans, texts = [], [], []
        latin = lambda t: t.encode("utf-8").decode("latin-1") if t else t  # noqa: E731  (1 char = 1 byte)
        for i, (text, prefix) in enumerate(zip(prompts, prefixes)):
            ids, offsets, buf = [], [], b""
            for piece in self._pieces(text, prefix, system, bool(waves)):
                if piece == "AUDIO":
                    n = audio_token_count(len(waves[i]), self.sampling_rate)
                    piece = [sp["<audio>"]] + [sp["[[[AUDIO:modality]]]"]] * n + [sp["</audio>"]]
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
            rows.append(ids)
            texts.append(self.tokenizer.decode(ids))
            found = text_spans(buf.decode("latin-1"), latin(text), [latin(o) for o in options] if options else None,
                               latin(prefix))
            spans.append(token_ranges(offsets, found))
        width = max(len(r) for r in rows)
        input_ids = torch.full((len(rows), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros_like(input_ids)
        for i, row in enumerate(rows):  # left padding, as the original batches
            input_ids[i, width - len(row):], mask[i, width - len(row):] = torch.tensor(row), 1
            spans[i] = {k: (a + width - len(row), b + width - len(row)) for k, (a, b) in spans[i].items()}
        tensors = {"input_ids": input_ids, "attention_mask": mask}
        if waves:
            feats = self.feature_extractor(waves, sampling_rate=self.sampling_rate, return_tensors="pt")
            tensors["input_features"] = feats.input_features
            frames = torch.tensor([min(len(w), int(MAX_SECONDS * self.sampling_rate)) // 160 for w in waves])
            tensors["feature_attention_mask"] = (torch.arange(feats.input_features.shape[-1])[None] < frames[:, None]).long()
        pad = sp["[[[AUDIO:modality]]]"]
        return PreparedInput(
            tensors=tensors, waveforms=waves or [None] * len(prompts), sampling_rate=self.sampling_rate, texts=texts,
            audio_positions=[((row == pad) | (row == sp["<audio>"]) | (row == sp["</audio>"])).nonzero()[:, 0]
                             for row in input_ids],
            str_tokens=[self.tokenizer.convert_ids_to_tokens(row.tolist()) for row in input_ids], spans=spans,
            prepare_kwargs=dict(prompt=prompt, answer_prefix=answer_prefix, options=options, system=system),
            meta={"family": "qwen_audio", "options": list(options) if options else None},
        )
