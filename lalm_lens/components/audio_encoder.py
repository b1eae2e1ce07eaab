"""Whisper-style audio encoder, hooked at every step.

log-mel `[batch, n_mels, frames]` -> conv (k3 s1) + GELU -> conv (k3 s2) + GELU
-> + positions -> pre-LN bidirectional blocks -> optional AvgPool -> optional
final LayerNorm. Hooks (all `[batch, pos, d_model]`): `hook_conv1`,
`hook_conv2`, `hook_pos_embed`, `hook_embed` (the first residual),
`blocks.{i}.*`, `hook_pooled`, `ln_post.*`, `hook_out`.
"""

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from jaxtyping import Bool, Float, Int
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from lalm_lens.components.block import TransformerBlock, make_norm
from lalm_lens.components.masks import attention_bias
from lalm_lens.config import EncoderConfig


def sinusoids(length: int, channels: int, max_timescale: float = 10000.0) -> Tensor:
    """Whisper's sinusoidal position table `[length, channels]` (sin half, then cos half)."""
    increment = math.log(max_timescale) / (channels // 2 - 1)
    inv_timescales = torch.exp(-increment * torch.arange(channels // 2))
    scaled = torch.arange(length)[:, None] * inv_timescales[None, :]
    return torch.cat([scaled.sin(), scaled.cos()], dim=1)


@dataclass
class EncoderOutput:
    hidden: Float[Tensor, "batch pos d_model"]  # after pooling and final norm
    lengths: Int[Tensor, "batch"]  # valid positions of `hidden` per clip
    layers: dict[int, Tensor] = field(default_factory=dict)  # block outputs kept on request


class AudioEncoder(nn.Module):
    """Conv stem, positional table, `cfg.n_layers` blocks, pool, final norm."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.conv1 = nn.Conv1d(cfg.n_mels, d, kernel_size=3, padding=1, dtype=cfg.dtype)
        self.conv2 = nn.Conv1d(d, d, kernel_size=3, stride=2, padding=1, dtype=cfg.dtype)
        pos = sinusoids(cfg.n_ctx, d) if cfg.positional_embedding_type == "sinusoidal" else torch.empty(cfg.n_ctx, d)
        self.W_pos = nn.Parameter(pos.to(torch.float32 if cfg.fp32_positions else cfg.dtype), requires_grad=False)
        self.blocks = nn.ModuleList(TransformerBlock(cfg, i) for i in range(cfg.n_layers))
        self.ln_post = make_norm(cfg) if cfg.final_norm else None
        self.hook_conv1 = HookPoint()  # [batch, frames, d_model]
        self.hook_conv2 = HookPoint()  # [batch, pos, d_model]
        self.hook_pos_embed = HookPoint()  # [batch, pos, d_model]
        self.hook_embed = HookPoint()  # [batch, pos, d_model]
        self.hook_pooled = HookPoint()  # [batch, pos // pool, d_model]
        self.hook_out = HookPoint()  # [batch, pos_out, d_model]

    def output_lengths(self, n_frames: Int[Tensor, "batch"]) -> tuple[Tensor, Tensor]:
        """Valid positions after the stride-2 conv, and after pooling."""
        after_conv = (n_frames - 1) // 2 + 1
        pool = self.cfg.pool or 1
        after_pool = (after_conv - pool) // pool + 1 if pool > 1 else after_conv
        return after_conv, after_pool

    def forward(
        self,
        features: Float[Tensor, "batch n_mels frames"],
        frame_mask: Optional[Bool[Tensor, "batch frames"]] = None,
        keep_layers: tuple[int, ...] = (),
    ) -> EncoderOutput:
        """Encode log-mel features; with `mask_padding`, padded frames are cropped first.

        Frames past `2 * T + crop_extra` are dropped (T: the longest clip's conv
        output length). With `crop_extra=2` this is exact against the uncropped
        computation (padded positions are masked keys, and the convolutions read at
        most two frames past the end); Qwen-Audio crops at `2 * T` itself (`crop_extra=0`).
        """
        cfg = self.cfg
        batch, _, frames = features.shape
        if cfg.n_frames is not None and frames != cfg.n_frames:
            raise ValueError(f"the encoder takes {cfg.n_frames} mel frames (the processor pads to them), got {frames}")
        n_frames = frame_mask.sum(-1) if frame_mask is not None else torch.full((batch,), frames)
        crop = cfg.mask_padding and frame_mask is not None
        if crop and not bool((frame_mask.long().cumprod(-1).sum(-1) == n_frames).all()):
            raise ValueError("feature_attention_mask must mark the leading frames as valid (right padding)")
        if crop:
            t_max = (int(n_frames.max()) - 1) // 2 + 1
            features = features[..., : min(frames, 2 * t_max + cfg.crop_extra)]
        features = features.to(self.conv1.weight.dtype)
        x = self.hook_conv1(F.gelu(self.conv1(features)).transpose(1, 2))
        x = self.hook_conv2(F.gelu(self.conv2(x.transpose(1, 2))).transpose(1, 2))
        n_pos = x.shape[1]
        if n_pos > self.W_pos.shape[0]:
            raise ValueError(f"{frames} mel frames give {n_pos} positions; the encoder has {self.W_pos.shape[0]}")
        pos = self.hook_pos_embed(self.W_pos[:n_pos].expand(batch, n_pos, -1))
        x = self.hook_embed((x + pos).to(x.dtype))
        valid_pos, lengths = self.output_lengths(n_frames.to(x.device))
        key_valid = torch.arange(n_pos, device=x.device)[None, :] < valid_pos[:, None] if crop else None
        mask = attention_bias(
            torch.arange(n_pos, device=x.device), n_pos, causal=False, key_valid=key_valid, dtype=x.dtype
        )
        layers = {}
        for i, block in enumerate(self.blocks):
            x = block(x, mask)
            if i in keep_layers:
                layers[i] = x
        if cfg.pool:
            x = self.hook_pooled(F.avg_pool1d(x.transpose(1, 2), cfg.pool, cfg.pool).transpose(1, 2))
        if self.ln_post is not None:
            x = self.ln_post(x)
        return EncoderOutput(self.hook_out(x), lengths, layers)
