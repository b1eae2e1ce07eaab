"""Voxtral (`VoxtralForConditionalGeneration`; Mini-3B-2507, Small-24B-2507) -> HookedLALM.

Whisper-style encoder with no pooling and no padding mask (audio is padded to
a multiple of 30 s and every chunk is encoded whole), positions kept in
float32; projector = 4 consecutive frames concatenated -> Linear -> GELU ->
Linear, no biases (375 tokens per 30 s chunk); Llama LM (GQA, no biases).
"""

from __future__ import annotations

from lalm_lens.config import LALMConfig, ProjectorConfig
from weight_conversion.base import KeyMap, Rule, transpose
from weight_conversion.common import lm_block_config, lm_rules, whisper_encoder_config, whisper_encoder_rules

MODEL_TYPES = ("voxtral",)
STACK = 4  # encoder frames per audio token

ALIASES = {
    "model.audio_tower.": "audio_tower.",
    "model.multi_modal_projector.": "multi_modal_projector.",
    "model.language_model.": "language_model.model.",
    "lm_head.": "language_model.lm_head.",
}

ABSENT = [
    "audio_encoder.blocks.*.attn.b_K",
    "blocks.*.attn.b_*",
    "blocks.*.mlp.b_*",
    "unembed.b_U",
]


def key_map(config: LALMConfig) -> KeyMap:
    rules = [
        *whisper_encoder_rules("audio_tower."),
        Rule("multi_modal_projector.linear_1.weight", "audio_projector.W_in", transpose),
        Rule("multi_modal_projector.linear_2.weight", "audio_projector.W_out", transpose),
        *lm_rules("language_model.model.", "language_model.lm_head.", tied=config.lm.tie_word_embeddings),
    ]
    return KeyMap(rules, ALIASES)


def convert_config(hf_config) -> LALMConfig:
    """`VoxtralConfig` -> `LALMConfig` (checks the projector width gotcha)."""
    a, t = hf_config.audio_config, hf_config.text_config
    if a.intermediate_size != STACK * a.d_model:
        raise ValueError(
            f"Voxtral's audio_config.intermediate_size ({a.intermediate_size}) is both the encoder FFN width and the "
            f"projector input ({STACK} x d_model = {STACK * a.d_model}); they must agree"
        )
    encoder = whisper_encoder_config(a, pool=None, final_norm=True, mask_padding=False)
    encoder.fp32_positions = True
    if hf_config.audio_token_id is None:
        raise ValueError("config.json has no audio_token_id")
    return LALMConfig(
        family="voxtral",
        lm=untied(lm_block_config(t)),
        encoder=encoder,
        projector=ProjectorConfig(kind="stack", d_in=a.d_model, d_out=t.hidden_size, d_hidden=t.hidden_size,
                                  stack=STACK, bias=False),
        audio_token_id=int(hf_config.audio_token_id),
        max_audio_seconds=None,
    )


def untied(lm):
    """VoxtralForConditionalGeneration keeps its own lm_head whatever the text config's tie flag says."""
    lm.tie_word_embeddings = False
    return lm


def input_builder(folder, config: LALMConfig):
    """Inputs through the checkpoint's `VoxtralProcessor` (mistral_common), or None without one."""
    from lalm_lens.inputs.hf_processor import load_processor
    from lalm_lens.inputs.voxtral import VoxtralInputs

    processor = load_processor(folder)
    return VoxtralInputs(processor, config) if processor is not None else None


def reference_model(folder, dtype, device, **_):
    from transformers import VoxtralForConditionalGeneration

    return VoxtralForConditionalGeneration.from_pretrained(folder, dtype=dtype).to(device).eval()


def reference_encoder_layers(ref):
    return list(ref.model.audio_tower.layers)


def reference_forward(ref, inp):
    return ref(**{k: v for k, v in inp.items() if k != "feature_attention_mask"}, output_hidden_states=True)
