"""Tiny Qwen3-Omni thinkers: saved alone (`save_pretrained`) and in the released full-model layout.

Built from the real config classes (`Qwen3OmniMoeThinkerConfig`, `Qwen3OmniMoeConfig`): 1 s
chunks (n_window 50), attention windows of 2 chunks (n_window_infer 200, so a 3 s clip spans
two), 8 Conv2d channels; an LM of 3 layers, the middle one dense (`mlp_only_layers`), the others
mixtures of 7 experts (an unusual count) with 3 per token, q/k norm, interleaved M-RoPE
sections [4, 2, 2]. Weights by `scale_init` (the fused expert tensors drawn at 1/sqrt(d_in)).
The processor is saved as the released one is laid out (tokenizer with the Qwen3-Omni special
tokens, Whisper feature extractor, a chat template of the same shape as the released one).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from tests.tiny_models import ANSWER_PREFIX, PROMPT, scale_init

SPECIALS = {
    "pad_token": "<|endoftext|>", "im_start_token": "<|im_start|>", "eos_token": "<|im_end|>",
    "audio_token": "<|audio_pad|>", "audio_bos_token": "<|audio_start|>", "audio_eos_token": "<|audio_end|>",
    "image_token": "<|image_pad|>", "video_token": "<|video_pad|>", "vision_bos_token": "<|vision_start|>",
    "vision_eos_token": "<|vision_end|>",
}
VOCAB = 256
CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'audio' %}<|audio_start|><|audio_pad|><|audio_end|>"
    "{% elif content['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif 'text' in content %}{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TEMPLATE_TEXT = "system You are a helpful assistant. user assistant Describe the audio . hello world"


def tokenizer():
    from transformers import PreTrainedTokenizerFast

    from lalm_lens.toy import word_tokenizer, words_of

    words = word_tokenizer(words_of([PROMPT, ANSWER_PREFIX, TEMPLATE_TEXT]), list(SPECIALS.values()), vocab_size=VOCAB)
    named = {k: v for k, v in SPECIALS.items() if k not in ("pad_token", "eos_token")}
    return PreTrainedTokenizerFast(tokenizer_object=words.backend_tokenizer, unk_token="[UNK]",
                                   pad_token=SPECIALS["pad_token"], eos_token=SPECIALS["eos_token"],
                                   extra_special_tokens=named)


def save_processor(folder: Path) -> Path:
    from transformers import WhisperFeatureExtractor

    folder = Path(folder)
    tok = tokenizer()
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(folder)
    features = WhisperFeatureExtractor(feature_size=128, chunk_length=30, return_attention_mask=True).to_dict()
    features.update(processor_class="Qwen3OmniMoeProcessor", image_processor_type="Qwen2VLImageProcessor",
                    patch_size=16, temporal_patch_size=2, merge_size=2)
    features.pop("mel_filters", None)
    (folder / "preprocessor_config.json").write_text(json.dumps(features, indent=2))
    return folder


def thinker_config(n_experts: int = 7, top_k: int = 3, norm_topk_prob: bool = True, tie: bool = False, **text):
    from transformers import Qwen3OmniMoeThinkerConfig

    ids = tokenizer().convert_tokens_to_ids
    text = dict(dict(vocab_size=VOCAB, hidden_size=64, intermediate_size=96, moe_intermediate_size=32,
                     num_hidden_layers=3, mlp_only_layers=[1], num_attention_heads=4, num_key_value_heads=2,
                     head_dim=16, num_experts=n_experts, num_experts_per_tok=top_k, norm_topk_prob=norm_topk_prob,
                     max_position_embeddings=4096, rope_parameters={"rope_type": "default", "rope_theta": 1e6,
                     "mrope_section": [4, 2, 2], "interleaved": True, "mrope_interleaved": True}), **text)
    return Qwen3OmniMoeThinkerConfig(
        audio_config=dict(d_model=32, encoder_layers=2, encoder_attention_heads=4, encoder_ffn_dim=64,
                          num_mel_bins=128, n_window=50, n_window_infer=200, downsample_hidden_size=8,
                          output_dim=64),
        vision_config=dict(depth=1, hidden_size=16, intermediate_size=32, num_heads=2, out_hidden_size=64,
                           deepstack_visual_indexes=[0]),
        text_config=text, tie_word_embeddings=tie,
        audio_token_id=ids("<|audio_pad|>"), audio_start_token_id=ids("<|audio_start|>"),
        image_token_id=ids("<|image_pad|>"), video_token_id=ids("<|video_pad|>"),
        vision_start_token_id=ids("<|vision_start|>"), vision_end_token_id=ids("<|vision_end|>"),
    )


def init(model, seed: int):
    scale_init(model, seed=seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("experts.gate_up_proj", "experts.down_proj")):  # [E, out, in]: fan-in is `in`
                p.copy_(torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5)
    return model


def build(seed: int = 0, **config):
    from transformers import Qwen3OmniMoeThinkerForConditionalGeneration

    torch.manual_seed(seed)
    return init(Qwen3OmniMoeThinkerForConditionalGeneration(thinker_config(**config)).eval(), seed)


def save_thinker(folder: Path, seed: int = 0, **config) -> Path:
    """`save_pretrained`: keys `audio_tower.*`, `visual.*`, `model.*` (experts one by one), `lm_head.*`."""
    build(seed, **config).save_pretrained(folder)
    return save_processor(folder)


FULL_SHARDS = {"audio_tower.": "model-00001-of-00004.safetensors", "visual.": "model-00002-of-00004.safetensors",
               "model.": "model-00003-of-00004.safetensors", "lm_head.": "model-00003-of-00004.safetensors"}
TALKER_SHARD = "model-00004-of-00004.safetensors"


def save_full(folder: Path, thinker_folder: Path) -> Path:
    """A full checkpoint (model_type "qwen3_omni_moe"): the thinker under `thinker.`, sharded with an index,
    plus a shard of `talker.*` / `code2wav.*` tensors that must never be read."""
    from safetensors.torch import load_file, save_file
    from transformers import Qwen3OmniMoeConfig, Qwen3OmniMoeThinkerConfig

    folder, thinker_folder = Path(folder), Path(thinker_folder)
    folder.mkdir(parents=True, exist_ok=True)
    shards: dict[str, dict] = {}
    for key, tensor in load_file(thinker_folder / "model.safetensors").items():
        shard = next(name for prefix, name in FULL_SHARDS.items() if key.startswith(prefix))
        shards.setdefault(shard, {})["thinker." + key] = tensor
    gen = torch.Generator().manual_seed(1)
    shards[TALKER_SHARD] = {"talker.model.codec_embedding.weight": torch.randn(8, 16, generator=gen),
                            "talker.code_predictor.lm_head.0.weight": torch.randn(8, 16, generator=gen),
                            "code2wav.code_embedding.weight": torch.randn(8, 16, generator=gen)}
    weight_map = {}
    for name, tensors in shards.items():
        save_file(tensors, folder / name, metadata={"format": "pt"})
        weight_map.update({k: name for k in tensors})
    total = sum(t.numel() * t.element_size() for s in shards.values() for t in s.values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    thinker = Qwen3OmniMoeThinkerConfig.from_pretrained(thinker_folder)
    Qwen3OmniMoeConfig(thinker_config=thinker.to_dict(), enable_audio_output=False).save_pretrained(folder)
    return save_processor(folder)
