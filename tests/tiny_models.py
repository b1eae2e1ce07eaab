"""Builders for tiny random checkpoints of each family (real HF config classes, `save_pretrained`)."""

from pathlib import Path

import numpy as np
import torch

PROMPT_WORDS = (
    "What is the gender of speaker ? Possible options : male , female . The ' s sound animal pitch high low "
    "Describe audio"
).split()
PROMPT = "What is the gender of the speaker? Possible options: male, female."
ANSWER_PREFIX = "The speaker's gender is"


def clip(seconds: float, seed: int = 0, rate: int = 16000) -> np.ndarray:
    """A deterministic test waveform: a tone plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * (220 + 110 * seed) * t) + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)


def randomize_biases(model: torch.nn.Module, std: float = 0.1, seed: int = 0) -> None:
    """Random weights leave biases at zero; give them values so the bias paths are tested."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=gen) * std)


def qwen2_audio_config(n_kv_heads: int = 2, **text_overrides):
    from transformers import Qwen2AudioConfig

    text = dict(
        model_type="qwen2", vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=n_kv_heads, **text_overrides,
    )
    audio = dict(
        model_type="qwen2_audio_encoder", d_model=64, encoder_layers=2, encoder_attention_heads=4,
        encoder_ffn_dim=128, num_mel_bins=128, max_source_positions=1500,
    )
    return Qwen2AudioConfig(audio_config=audio, text_config=text, audio_token_index=255)


def save_qwen2_audio(folder: Path, n_kv_heads: int = 2, seed: int = 0, **text_overrides) -> Path:
    from transformers import Qwen2AudioForConditionalGeneration

    from lalm_lens.toy import qwen2_audio_processor

    torch.manual_seed(seed)
    model = Qwen2AudioForConditionalGeneration(qwen2_audio_config(n_kv_heads, **text_overrides)).eval()
    randomize_biases(model, seed=seed)
    model.save_pretrained(folder)
    qwen2_audio_processor(PROMPT_WORDS, vocab_size=256, audio_token_id=255).save_pretrained(folder)
    return Path(folder)
