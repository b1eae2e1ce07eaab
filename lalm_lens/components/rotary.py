"""Rotary position embedding (rotate-half form, as in Llama / Qwen2)."""

import math

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn


def rope_inverse_frequencies(d_rot: int, base: float, scaling: dict | None = None) -> Tensor:
    """Inverse frequencies for `d_rot` rotated dims, with optional llama3 scaling.

    llama3 (Llama-3.1): wavelengths longer than `original / low_freq_factor` are
    divided by `factor`, shorter than `original / high_freq_factor` kept, and the
    band between interpolated smoothly.
    """
    inv_freq = 1.0 / (base ** (torch.arange(0, d_rot, 2, dtype=torch.int64).float() / d_rot))
    if not scaling:
        return inv_freq
    kind = scaling.get("rope_type", scaling.get("type", "llama3"))
    if kind != "llama3":
        raise NotImplementedError(f"RoPE scaling {kind!r} is not supported (only llama3)")
    factor = scaling["factor"]
    low, high = scaling["low_freq_factor"], scaling["high_freq_factor"]
    original = scaling["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > original / low, inv_freq / factor, inv_freq)
    smooth = (original / wavelen - low) / (high - low)
    smoothed = (1 - smooth) * scaled / factor + smooth * scaled
    medium = (wavelen >= original / high) & (wavelen <= original / low)
    return torch.where(medium, smoothed, scaled)


class Rotary(nn.Module):
    """Computes cos/sin tables for positions and rotates query/key heads."""

    def __init__(self, d_head: int, base: float, scaling: dict | None = None):
        super().__init__()
        self.register_buffer("inv_freq", rope_inverse_frequencies(d_head, base, scaling), persistent=False)

    def positions(self, n_new: int, past: int, input_ids=None, attention_mask=None, device=None) -> Tensor:
        """Default position ids `[1, n_new]`: `past, past + 1, ...` (as Hugging Face's forward)."""
        return torch.arange(past, past + n_new, device=device)[None]

    def cos_sin(
        self, positions: Int[Tensor, "batch pos"], dtype: torch.dtype
    ) -> tuple[Float[Tensor, "batch pos 1 d_head"], Float[Tensor, "batch pos 1 d_head"]]:
        freqs = positions[..., None].float() * self.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)[:, :, None, :]
        return emb.cos().to(dtype), emb.sin().to(dtype)

    @staticmethod
    def rotate(
        x: Float[Tensor, "batch pos head d_head"], cos: Tensor, sin: Tensor
    ) -> Float[Tensor, "batch pos head d_head"]:
        half = x.shape[-1] // 2
        rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
        return x * cos + rotated * sin
