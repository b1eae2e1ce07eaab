"""Qwen2.5-Omni thinker (`Qwen2_5OmniThinkerForConditionalGeneration`, audio + text) -> HookedLALM.

Config: a Whisper-style encoder attending within chunks of `n_window * 2` mel
frames (`ChunkedAudioEncoder`: no position table in the checkpoint, k_proj
without bias, AvgPool 2, `ln_post`, `proj` to the LM width), no separate
projector, and a Qwen2 LM (q/k/v bias) with multimodal RoPE (`mrope_section`).
The vision tower, the talker and the vocoder are not converted.

Keys, three layouts mapped onto one:
- the released full model (`Qwen/Qwen2.5-Omni-7B`): `thinker.audio_tower.*`,
  `thinker.visual.*`, `thinker.model.*`, `thinker.lm_head.*`, `talker.*`, `token2wav.*`;
- a thinker saved alone (`save_pretrained`): `audio_tower.*`, `visual.*`, `model.*`, `lm_head.*`;
- transformers >= 5 in memory: `model.audio_tower.*`, `model.visual.*`, `model.language_model.*`, `lm_head.*`.
"""

from __future__ import annotations

from lalm_lens.config import LALMConfig, ProjectorConfig
from weight_conversion.common import lm_block_config, lm_rules, whisper_encoder_config, whisper_encoder_rules
from weight_conversion.keys import KeyMap, Rule, transpose

# Parameters with no checkpoint counterpart (kept at zero).
ABSENT = ("audio_encoder.blocks.*.attn.b_K", "blocks.*.attn.b_O", "blocks.*.mlp.b_*", "unembed.b_U")

# Checkpoint prefixes that are not the thinker's audio + text path (after the aliases below).
NOT_CONVERTED = ("visual.", "talker.", "token2wav.")

# Every layout -> the thinker-only one (`audio_tower.`, `visual.`, `model.`, `lm_head.`).
PREFIX_ALIASES = {
    "thinker.audio_tower.": "audio_tower.",
    "thinker.visual.": "visual.",
    "thinker.model.audio_tower.": "audio_tower.",
    "thinker.model.visual.": "visual.",
    "thinker.model.language_model.": "model.",
    "thinker.model.": "model.",
    "thinker.lm_head.": "lm_head.",
    "model.audio_tower.": "audio_tower.",
    "model.visual.": "visual.",
    "model.language_model.": "model.",
}
_LAYOUTS = KeyMap([], PREFIX_ALIASES)


def is_thinker_key(key: str) -> bool:
    """Whether a checkpoint key is one we convert (shards holding none, e.g. the talker's, are never read)."""
    return not _LAYOUTS.canonical(key).startswith(NOT_CONVERTED)


def key_map(config: LALMConfig) -> KeyMap:
    src, dst = "audio_tower.", "audio_encoder."
    rules = [
        *whisper_encoder_rules(src, dst),
        Rule(src + "ln_post.weight", dst + "ln_post.w"),
        Rule(src + "ln_post.bias", dst + "ln_post.b"),
        Rule(src + "proj.weight", dst + "W_proj", transpose),
        Rule(src + "proj.bias", dst + "b_proj"),
        Rule(src + "audio_bos_eos_token.weight", None),  # in the checkpoint, unused by the thinker
        Rule(src + "positional_embedding.positional_embedding", None),  # computed, never saved in practice
        *lm_rules("model.", "lm_head.", tied=config.lm.tie_word_embeddings),
    ]
    return KeyMap(rules, PREFIX_ALIASES, drop_prefixes=NOT_CONVERTED)


def thinker_config(hf_config):
    """The thinker's config from a full `Qwen2_5OmniConfig` (or the thinker config itself)."""
    return getattr(hf_config, "thinker_config", None) or hf_config


def convert_config(hf_config) -> LALMConfig:
    """`Qwen2_5OmniThinkerConfig` (or a full `Qwen2_5OmniConfig`) -> `LALMConfig`."""
    hf_config = thinker_config(hf_config)
    a, t = hf_config.audio_config, hf_config.text_config
    if a.output_dim != t.hidden_size:
        raise ValueError(f"the audio encoder's output_dim ({a.output_dim}) must equal the LM width ({t.hidden_size})")
    encoder = whisper_encoder_config(a, kind="chunked", pool=2, final_norm=True, positions="sinusoidal")
    encoder.window_frames = 2 * a.n_window
    encoder.d_out = a.output_dim
    encoder.n_frames = None  # any number of frames: positions restart in every chunk (the processor pads to its window)
    lm = lm_block_config(t)
    rope = dict(getattr(t, "rope_parameters", None) or {})
    lm.mrope_section = list(rope.get("mrope_section") or [16, 24, 24])  # transformers' default when absent
    lm.tie_word_embeddings = bool(getattr(hf_config, "tie_word_embeddings", False))  # the thinker's flag decides
    audio_token_id = getattr(hf_config, "audio_token_id", None) or getattr(hf_config, "audio_token_index")
    return LALMConfig(
        family="qwen2_5_omni",
        lm=lm,
        encoder=encoder,
        projector=ProjectorConfig(kind="identity", d_in=a.output_dim, d_out=t.hidden_size),
        audio_token_id=int(audio_token_id),
        max_audio_seconds=None,  # the processor's feature extractor sets it (released: 300 s; see prompts.py)
        pad_token_id=getattr(hf_config, "pad_token_id", None),  # what `generate` writes after a row ends
    )
