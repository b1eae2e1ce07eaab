"""Tiny Qwen2.5-Omni checkpoints: a thinker saved alone, and the released full-model layout.

Built from the real config classes (`Qwen2_5OmniThinkerConfig`, `Qwen2_5OmniConfig`),
weights by `scale_init`, `n_window=50` (1 s chunks, so a 3 s clip spans three), a tiny
vision tower (always built by the original), and a processor saved as the released
one is (tokenizer, Whisper feature extractor + image-processor fields in
`preprocessor_config.json`, `chat_template.jinja`), which `prepare()` loads.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.tiny_models import ANSWER_PREFIX, PROMPT, scale_init

SPECIALS = {
    "pad_token": "<|endoftext|>", "im_start_token": "<|im_start|>", "eos_token": "<|im_end|>",
    "audio_token": "<|AUDIO|>", "audio_bos_token": "<|audio_bos|>", "audio_eos_token": "<|audio_eos|>",
    "image_token": "<|IMAGE|>", "video_token": "<|VIDEO|>", "vision_bos_token": "<|vision_bos|>",
    "vision_eos_token": "<|vision_eos|>",
}
VOCAB = 256

# The released chat template (Qwen/Qwen2.5-Omni-7B, chat_template.jinja).
OMNI_CHAT_TEMPLATE = (
    "{% set audio_count = namespace(value=0) %}{% set image_count = namespace(value=0) %}"
    "{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' or 'image' in content or 'image_url' in content %}"
    "{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}Picture {{ image_count.value }}: "
    "{% endif %}<|vision_bos|><|IMAGE|><|vision_eos|>"
    "{% elif content['type'] == 'audio' or 'audio' in content or 'audio_url' in content %}"
    "{% set audio_count.value = audio_count.value + 1 %}{% if add_audio_id %}Audio {{ audio_count.value }}: "
    "{% endif %}<|audio_bos|><|AUDIO|><|audio_eos|>"
    "{% elif content['type'] == 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}"
    "{% if add_vision_id %}Video {{ video_count.value }}: {% endif %}<|vision_bos|><|VIDEO|><|vision_eos|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TEMPLATE_TEXT = "system You are a helpful assistant. user assistant Describe the audio . hello world"


def omni_tokenizer():
    """A word-level tokenizer with the Omni special tokens at the top ids, named as the processor reads them."""
    from transformers import PreTrainedTokenizerFast

    from lalm_lens.toy import word_tokenizer, words_of

    specials = list(SPECIALS.values())
    words = word_tokenizer(words_of([PROMPT, ANSWER_PREFIX, TEMPLATE_TEXT]), specials, vocab_size=VOCAB)
    named = {k: v for k, v in SPECIALS.items() if k not in ("pad_token", "eos_token")}
    return PreTrainedTokenizerFast(tokenizer_object=words.backend_tokenizer, unk_token="[UNK]",
                                   pad_token=SPECIALS["pad_token"], eos_token=SPECIALS["eos_token"],
                                   extra_special_tokens=named)


def save_omni_processor(folder: Path, chunk_length: int = 30) -> Path:
    """The processor's files as the released checkpoint has them (`chunk_length=300` there)."""
    from transformers import WhisperFeatureExtractor

    folder = Path(folder)
    tok = omni_tokenizer()
    tok.chat_template = OMNI_CHAT_TEMPLATE
    tok.save_pretrained(folder)
    extractor = WhisperFeatureExtractor(feature_size=128, chunk_length=chunk_length, return_attention_mask=True)
    features = extractor.to_dict()
    features.update(processor_class="Qwen2_5OmniProcessor", image_processor_type="Qwen2VLImageProcessor",
                    min_pixels=3136, max_pixels=12845056, patch_size=14, temporal_patch_size=2, merge_size=2,
                    image_mean=[0.48145466, 0.4578275, 0.40821073], image_std=[0.26862954, 0.26130258, 0.27577711])
    features.pop("mel_filters", None)
    (folder / "preprocessor_config.json").write_text(json.dumps(features, indent=2))
    return folder


def thinker_config(n_window: int = 50, tie: bool = False, **text_overrides):
    from transformers import Qwen2_5OmniThinkerConfig

    ids = omni_tokenizer().convert_tokens_to_ids
    text = dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                num_key_value_heads=2, rope_scaling={"type": "default", "mrope_section": [2, 3, 3]}, rope_theta=1e6,
                max_position_embeddings=4096, tie_word_embeddings=not tie,  # ignored: the thinker's flag counts
                **text_overrides)
    return Qwen2_5OmniThinkerConfig(
        audio_config=dict(d_model=64, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=128,
                          num_mel_bins=128, max_source_positions=1500, n_window=n_window, output_dim=64),
        vision_config=dict(depth=1, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                           fullatt_block_indexes=[0]),
        text_config=text, tie_word_embeddings=tie,
        audio_token_index=ids("<|AUDIO|>"), audio_start_token_id=ids("<|audio_bos|>"),
        audio_end_token_id=ids("<|audio_eos|>"), image_token_index=ids("<|IMAGE|>"), video_token_index=ids("<|VIDEO|>"),
        vision_start_token_id=ids("<|vision_bos|>"), vision_end_token_id=ids("<|vision_eos|>"),
        eos_token_id=ids("<|im_end|>"), pad_token_id=ids("<|endoftext|>"),  # thinker level, as released
    )


def save_omni_thinker(folder: Path, seed: int = 0, **config) -> Path:
    """`save_pretrained` of a tiny thinker: keys `audio_tower.*`, `visual.*`, `model.*`, `lm_head.*`."""
    from transformers import Qwen2_5OmniThinkerForConditionalGeneration

    torch.manual_seed(seed)
    model = Qwen2_5OmniThinkerForConditionalGeneration(thinker_config(**config)).eval()
    scale_init(model, seed=seed)
    model.save_pretrained(folder)
    return save_omni_processor(folder)


FULL_SHARDS = {  # the released layout, one part per shard; the talker and vocoder shard holds dummies
    "audio_tower.": "model-00001-of-00004.safetensors",
    "visual.": "model-00002-of-00004.safetensors",
    "model.": "model-00003-of-00004.safetensors",
    "lm_head.": "model-00003-of-00004.safetensors",
}
TALKER_SHARD = "model-00004-of-00004.safetensors"


def save_omni_full(folder: Path, thinker_folder: Path) -> Path:
    """A full Omni checkpoint (model_type "qwen2_5_omni") holding the thinker of `thinker_folder` under
    `thinker.`, sharded with an index, plus a shard of `talker.*` / `token2wav.*` tensors."""
    from safetensors.torch import load_file, save_file
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniThinkerConfig

    folder, thinker_folder = Path(folder), Path(thinker_folder)
    folder.mkdir(parents=True, exist_ok=True)
    thinker = load_file(thinker_folder / "model.safetensors")
    shards: dict[str, dict] = {}
    for key, tensor in thinker.items():
        shard = next(name for prefix, name in FULL_SHARDS.items() if key.startswith(prefix))
        shards.setdefault(shard, {})["thinker." + key] = tensor
    gen = torch.Generator().manual_seed(1)
    shards[TALKER_SHARD] = {"talker.model.embed_tokens.weight": torch.randn(8, 16, generator=gen),
                            "talker.codec_head.weight": torch.randn(8, 16, generator=gen),
                            "token2wav.code2wav_bigvgan_model.conv_pre.weight": torch.randn(4, 4, 3, generator=gen)}
    weight_map = {}
    for name, tensors in shards.items():
        save_file(tensors, folder / name, metadata={"format": "pt"})
        weight_map.update({k: name for k in tensors})
    total = sum(t.numel() * t.element_size() for s in shards.values() for t in s.values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    thinker_cfg = Qwen2_5OmniThinkerConfig.from_pretrained(thinker_folder)
    Qwen2_5OmniConfig(thinker_config=thinker_cfg.to_dict(), enable_audio_output=False).save_pretrained(folder)
    return save_omni_processor(folder)
