"""Small real processors for toy and test models (no downloads).

A word-level `tokenizers` vocabulary with the family's special tokens, wrapped
in `PreTrainedTokenizerFast`, plus a `WhisperFeatureExtractor` and the family's
chat template, gives a working `Qwen2AudioProcessor` that saves and reloads like
the real one; a byte-level `tekken.json` gives a working `VoxtralProcessor`.
Used by the tests and by the demo model.
"""

from __future__ import annotations

import re
from typing import Iterable

QWEN2_AUDIO_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|audio_bos|>", "<|audio_eos|>", "<|AUDIO|>")

QWEN2_AUDIO_CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}"
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
    "{% set audio_count.value = audio_count.value + 1 %}Audio {{ audio_count.value }}: <|audio_bos|><|AUDIO|><|audio_eos|>\n"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

TEMPLATE_WORDS = ("system", "user", "assistant", "You", "are", "a", "helpful", "assistant", ".", "Audio", "1", ":", "2")


def words_of(texts: Iterable[str]) -> list[str]:
    """The word-level tokens (`\\w+` and punctuation runs) of some texts, in first-seen order."""
    seen: dict[str, None] = {}
    for text in texts:
        for word in re.findall(r"\w+|[^\w\s]+", text):
            seen.setdefault(word, None)
    return list(seen)


def word_tokenizer(words: Iterable[str], specials: Iterable[str], vocab_size: int | None = None, special_ids=None):
    """A `PreTrainedTokenizerFast` over whole words; `[UNK]` is id 0.

    Special tokens take the last ids of `vocab_size` (in order) unless
    `special_ids` maps some of them to explicit ids.
    """
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = list(specials)
    vocab = {"[UNK]": 0}
    for word in words:
        vocab.setdefault(word, len(vocab))
    size = vocab_size or len(vocab) + len(specials)
    ids = dict(special_ids or {})
    free = [i for i in range(size - len(specials), size) if i not in ids.values()]
    for tok in specials:
        if tok not in ids:
            ids[tok] = free.pop(0)
    if len(vocab) > min(ids.values()):
        raise ValueError(f"{len(vocab)} words do not fit below the special ids (vocab_size={size})")
    for i in range(len(vocab), size):  # fill unused ids so every id decodes
        if i not in ids.values():
            vocab[f"[unused{i}]"] = i
    vocab.update(ids)
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")
    fast.add_special_tokens({"additional_special_tokens": specials})
    return fast


def qwen2_audio_processor(words: Iterable[str], vocab_size: int, audio_token_id: int, chunk_length: int = 30):
    """A `Qwen2AudioProcessor` with a word-level tokenizer; `<|AUDIO|>` gets `audio_token_id`."""
    from transformers import Qwen2AudioProcessor, WhisperFeatureExtractor

    tokenizer = word_tokenizer(
        list(TEMPLATE_WORDS) + list(words), QWEN2_AUDIO_SPECIALS, vocab_size, {"<|AUDIO|>": audio_token_id}
    )
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.eos_token = "<|im_end|>"
    features = WhisperFeatureExtractor(feature_size=128, chunk_length=chunk_length, return_attention_mask=True)
    return Qwen2AudioProcessor(features, tokenizer, chat_template=QWEN2_AUDIO_CHAT_TEMPLATE)


# ---------------------------------------------------------------- Voxtral (mistral_common tekken)
# Special-token ranks of the real Voxtral tekken.json; the other ranks below the
# special-token count become "<SPECIAL_i>" fillers, as mistral_common does.
VOXTRAL_SPECIALS = {
    0: "<unk>", 1: "<s>", 2: "</s>", 3: "[INST]", 4: "[/INST]", 5: "[AVAILABLE_TOOLS]", 6: "[/AVAILABLE_TOOLS]",
    7: "[TOOL_RESULTS]", 8: "[/TOOL_RESULTS]", 9: "[TOOL_CALLS]", 10: "[IMG]", 11: "<pad>", 12: "[IMG_BREAK]",
    13: "[IMG_END]", 14: "[PREFIX]", 15: "[MIDDLE]", 16: "[SUFFIX]", 17: "[SYSTEM_PROMPT]", 18: "[/SYSTEM_PROMPT]",
    19: "[TOOL_CONTENT]", 24: "[AUDIO]", 25: "[BEGIN_AUDIO]", 32: "[ARGS]", 33: "[CALL_ID]", 34: "[TRANSCRIBE]",
}
TEKKEN_PATTERN = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+|"
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*|"
    r"\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def tekken_json(merges: Iterable[bytes] = (), num_special_tokens: int = 1000) -> dict:
    """A byte-level tekken vocabulary (ranks 0-255 are the bytes; `merges` after them, each
    buildable from earlier pieces) with Voxtral's special tokens and audio settings."""
    import base64

    pieces = [bytes([i]) for i in range(256)] + [bytes(m) for m in merges]
    vocab = []
    for rank, piece in enumerate(pieces):
        try:
            token_str = piece.decode("utf-8")
        except UnicodeDecodeError:
            token_str = None
        vocab.append({"rank": rank, "token_bytes": base64.b64encode(piece).decode("ascii"), "token_str": token_str})
    specials = [{"rank": i, "token_str": VOXTRAL_SPECIALS.get(i, f"<SPECIAL_{i}>"), "is_control": True}
                for i in range(num_special_tokens)]
    return {
        "config": {"pattern": TEKKEN_PATTERN, "num_vocab_tokens": len(vocab),
                   "default_vocab_size": len(vocab) + num_special_tokens,
                   "default_num_special_tokens": num_special_tokens, "version": "v7"},
        "vocab": vocab,
        "special_tokens": specials,
        "audio": {"sampling_rate": 16000, "frame_rate": 12.5, "chunk_length_s": 30.0,
                  "audio_encoding_config": {"num_mel_bins": 128, "hop_length": 160, "window_size": 400}},
        "version": 1,
        "type": "Tekken",
    }


def voxtral_processor(folder, merges: Iterable[bytes] = (b" t", b"he", b" the", b"er", b"in", b" s", b"is", b" is"),
                      num_special_tokens: int = 1000):
    """Write a tiny Voxtral processor (tekken.json + feature extractor) into `folder` and load it.

    `tokenizer_config.json` names `MistralCommonBackend` (else transformers converts
    tekken.json into a plain tokenizer); `processor_config.json` names `VoxtralProcessor`.
    """
    import json
    from pathlib import Path

    from transformers import AutoProcessor, WhisperFeatureExtractor

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tekken.json").write_text(json.dumps(tekken_json(merges, num_special_tokens)))
    (folder / "tokenizer_config.json").write_text(json.dumps({"tokenizer_class": "MistralCommonBackend"}))
    WhisperFeatureExtractor(feature_size=128).save_pretrained(folder)
    (folder / "processor_config.json").write_text(json.dumps({"processor_class": "VoxtralProcessor"}))
    return AutoProcessor.from_pretrained(folder)


# ---------------------------------------------------------------- Audio Flamingo 3
AF3_SPECIALS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<sound>")

# The chat template `convert_audioflamingo3_to_hf.py` writes: one `<sound>` before all the text of a
# turn that holds audio (whatever the order of the parts), and a default system turn.
AF3_CHAT_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n{% endif %}"
    "{% for m in messages if m['content'] is not none %}<|im_start|>{{ m['role'] }}\n"
    "{% if m['content'] is string %}{{ m['content'] }}{% else %}"
    "{% set audio = namespace(found=False) %}{% set text_buf = namespace(v='') %}"
    "{% for c in m['content'] %}{% if c.get('type') == 'audio' or 'audio' in c %}{% set audio.found = True %}"
    "{% elif c.get('type') == 'text' or 'text' in c %}{% set text_buf.v = text_buf.v + c['text'] %}{% endif %}"
    "{% endfor %}{% if audio.found %}{{ '<sound>' }}{% endif %}{{ text_buf.v }}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def audio_flamingo3_processor(words: Iterable[str], vocab_size: int, audio_token_id: int):
    """An `AudioFlamingo3Processor` with a word-level tokenizer; `<sound>` gets `audio_token_id`."""
    from transformers import AudioFlamingo3Processor, WhisperFeatureExtractor

    tokenizer = word_tokenizer(list(TEMPLATE_WORDS) + list(words), AF3_SPECIALS, vocab_size,
                               {"<sound>": audio_token_id})
    tokenizer.pad_token = "<|endoftext|>"
    tokenizer.eos_token = "<|im_end|>"
    features = WhisperFeatureExtractor(feature_size=128, return_attention_mask=True)
    return AudioFlamingo3Processor(features, tokenizer, chat_template=AF3_CHAT_TEMPLATE)
