"""A tiny random Granite Speech checkpoint (real `GraniteSpeechConfig`, its LoRA adapter saved by peft) with a processor.

Sizes are chosen so every path shows: conformer attention blocks of 8 frames (a 1 s clip spans several),
projector windows of 15 frames, Granite's four multipliers away from 1, and a LoRA on q/v with non-zero B.
"""

from pathlib import Path

import torch

from tests.tiny_models import PROMPT_WORDS, scale_init

AUDIO_TOKEN_ID = 255
CONTEXT_SIZE = 8  # conformer attention block (frames); the released models use 200
LORA = dict(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"])


def granite_config(lora: bool = True):
    from transformers import GraniteSpeechConfig

    encoder = dict(input_dim=160, num_layers=2, hidden_dim=32, feedforward_mult=2, num_heads=2, dim_head=16,
                   output_dim=12, context_size=CONTEXT_SIZE, max_pos_emb=10, conv_kernel_size=5,
                   conv_expansion_factor=2)
    projector = dict(model_type="blip_2_qformer", hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, encoder_hidden_size=32, cross_attention_frequency=1)
    text = dict(model_type="granite", vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, embedding_multiplier=3.0, residual_multiplier=0.5,
                attention_multiplier=0.2, logits_scaling=2.0, tie_word_embeddings=True,
                rope_parameters=dict(rope_type="default", rope_theta=1e4))
    return GraniteSpeechConfig(encoder_config=encoder, projector_config=projector, text_config=text,
                               audio_token_index=AUDIO_TOKEN_ID, has_lora_adapter=lora, window_size=15,
                               downsample_rate=5)


def granite_processor(words=PROMPT_WORDS):
    """A `GraniteSpeechProcessor`: word-level tokenizer with `<|audio|>` at `AUDIO_TOKEN_ID`, Granite's chat turns."""
    from transformers import GraniteSpeechFeatureExtractor, GraniteSpeechProcessor

    from lalm_lens.toy import TEMPLATE_WORDS, word_tokenizer

    specials = ("<|end_of_text|>", "<|start_of_role|>", "<|end_of_role|>", "<|audio|>")
    tokenizer = word_tokenizer(list(TEMPLATE_WORDS) + list(words), specials, 256, {"<|audio|>": AUDIO_TOKEN_ID})
    tokenizer.pad_token = tokenizer.eos_token = "<|end_of_text|>"
    tokenizer.chat_template = CHAT_TEMPLATE
    return GraniteSpeechProcessor(GraniteSpeechFeatureExtractor(), tokenizer)


# Granite 3.3's turn markup; the prompt text (with its `<|audio|>`) is the user turn's content.
CHAT_TEMPLATE = (
    "{% for m in messages %}<|start_of_role|>{{ m['role'] }}<|end_of_role|>{{ m['content'] }}<|end_of_text|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|start_of_role|>assistant<|end_of_role|>{% endif %}"
)


def randomize_batch_norm(model: torch.nn.Module, seed: int = 0) -> None:
    """Running statistics away from (0, 1), so a conv module that ignored them would show."""
    gen = torch.Generator().manual_seed(seed)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm1d):
            module.running_mean.copy_(0.1 * torch.randn(module.running_mean.shape, generator=gen))
            module.running_var.copy_(1 + 0.2 * torch.rand(module.running_var.shape, generator=gen))


def save_granite(folder: Path, seed: int = 0, lora: bool = True) -> Path:
    """Base weights by `save_pretrained`; the adapter as peft writes it (`adapter_config.json` and
    `adapter_model.safetensors` with `base_model.model.<module>.lora_{A,B}.weight`), B non-zero."""
    from transformers import GraniteSpeechForConditionalGeneration

    from lalm_lens.families.granite_speech.reference import add_lora

    torch.manual_seed(seed)
    model = GraniteSpeechForConditionalGeneration(granite_config(lora)).eval()
    scale_init(model, seed=seed)
    with torch.no_grad():
        randomize_batch_norm(model, seed)
    model.save_pretrained(folder)
    if lora:
        from peft import LoraConfig, get_peft_model_state_dict
        from safetensors.torch import save_file

        config = LoraConfig(**LORA)
        add_lora(model, config)
        gen = torch.Generator().manual_seed(seed + 1)
        adapter = {k: torch.randn(v.shape, generator=gen) / v.shape[-1] ** 0.5
                   for k, v in get_peft_model_state_dict(model).items()}
        save_file({"base_model.model." + k: v for k, v in adapter.items()}, Path(folder) / "adapter_model.safetensors")
        config.save_pretrained(folder)
    granite_processor().save_pretrained(folder)
    return Path(folder)
