"""The Qwen(-Audio) v1 tokenizer on `tiktoken`, from the checkpoint's `qwen.tiktoken` (no remote code).

Special tokens follow the ordinary ranks in the original's order: `<|endoftext|>`,
`<|im_start|>`, `<|im_end|>`, 205 `<|extra_i|>`, then the audio tokens (the pad
`[[[AUDIO:modality]]]`, task/language/timestamp tags, ..., `<audio>`, `</audio>`).
"""

from __future__ import annotations

import base64
import unicodedata
from pathlib import Path

import torch

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
