"""Qwen2-Audio (`Qwen2AudioForConditionalGeneration`) -> HookedLALM.

Config: Whisper-large-v3-like encoder (AvgPool 2, final LayerNorm, padded
frames masked), `Linear(1280 -> 4096)` projector, Qwen2 LM (q/k/v bias, RoPE).
Keys: the hub layout (`audio_tower.*`, `multi_modal_projector.*`,
`language_model.model.*`, `language_model.lm_head.*`) and the transformers >= 5
layout (`model.audio_tower.*`, `model.language_model.*`, `lm_head.*`).
"""

from __future__ import annotations

from weight_conversion.base import KeyMap, Rule, transpose
from weight_conversion.common import lm_block_config, lm_rules, whisper_encoder_config, whisper_encoder_rules
from lalm_lens.config import LALMConfig, ProjectorConfig

MODEL_TYPES = ("qwen2_audio",)

ALIASES = {
    "model.audio_tower.": "audio_tower.",
    "model.multi_modal_projector.": "multi_modal_projector.",
    "model.language_model.": "language_model.model.",
    "lm_head.": "language_model.lm_head.",
}


def key_map(config: LALMConfig) -> KeyMap:
    rules = [
        *whisper_encoder_rules("audio_tower."),
        Rule("multi_modal_projector.linear.weight", "audio_projector.W", transpose),
        Rule("multi_modal_projector.linear.bias", "audio_projector.b"),
        *lm_rules("language_model.model.", "language_model.lm_head.", tied=config.lm.tie_word_embeddings),
    ]
    return KeyMap(rules, ALIASES)


# Parameters with no checkpoint counterpart (kept at zero).
ABSENT = [
    "audio_encoder.blocks.*.attn.b_K",
    "blocks.*.attn.b_O",
    "blocks.*.mlp.b_*",
    "unembed.b_U",
]


def convert_config(hf_config) -> LALMConfig:
    """`Qwen2AudioConfig` -> `LALMConfig`."""
    a, t = hf_config.audio_config, hf_config.text_config
    encoder = whisper_encoder_config(a, pool=2, final_norm=True, mask_padding=True)
    lm = lm_block_config(t)
    lm.tie_word_embeddings = False  # Qwen2AudioForConditionalGeneration keeps its own lm_head whatever the flag
    audio_token_id = getattr(hf_config, "audio_token_id", None) or getattr(hf_config, "audio_token_index")
    return LALMConfig(
        family="qwen2_audio",
        lm=lm,
        encoder=encoder,
        projector=ProjectorConfig(kind="linear", d_in=a.d_model, d_out=t.hidden_size),
        audio_token_id=int(audio_token_id),
        max_audio_seconds=encoder.n_frames / 100,
    )


def input_builder(folder, config: LALMConfig):
    """Inputs through the checkpoint's `Qwen2AudioProcessor`, or None if the folder has none."""
    from lalm_lens.inputs.hf_processor import HFProcessorInputs, load_processor

    processor = load_processor(folder)
    return HFProcessorInputs(processor, config) if processor is not None else None


def reference_model(folder, dtype, device, **_):
    """The original Hugging Face model, for `lalm-lens verify`."""
    from transformers import Qwen2AudioForConditionalGeneration

    return Qwen2AudioForConditionalGeneration.from_pretrained(folder, dtype=dtype).to(device).eval()


def reference_encoder_layers(ref):
    return list(ref.model.audio_tower.layers)


def reference_forward(ref, inp):
    """HF forward with LM hidden states: [embeddings, layer outputs..., final-normed output]."""
    return ref(**inp, output_hidden_states=True)
