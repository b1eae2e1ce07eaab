"""Small real processors for toy and test models (no downloads).

A word-level `tokenizers` vocabulary with the family's special tokens, wrapped
in `PreTrainedTokenizerFast`, plus a `WhisperFeatureExtractor` and the family's
chat template, gives a working `Qwen2AudioProcessor` that saves and reloads like
the real one. Used by the tests and by the demo model.
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
