"""Whisper-style audio encoders, hooked at every step.

log-mel `[batch, n_mels, frames]` -> conv (k3 s1) + GELU -> conv (k3 s2) + GELU
-> + positions -> pre-LN bidirectional blocks -> optional AvgPool -> optional
final LayerNorm. Hooks (all `[batch, pos, d_model]`): `hook_conv1`,
`hook_conv2`, `hook_pos_embed`, `hook_embed` (the first residual),
`blocks.{i}.*`, `hook_pooled`, `ln_post.*`, `hook_out`.

The families differ in which frames are encoded and which keys a frame may
see; each difference is a subclass overriding one step (`frame_layout`,
`attention_mask`), chosen once by `EncoderConfig.kind` (`encoders.ENCODERS`):
- `AudioEncoder`: whole 30 s windows, every frame sees every frame (Voxtral, DeSTA);
- `PaddedAudioEncoder`: padded frames cropped and masked as keys (Qwen2-Audio, Audio Flamingo 3);
- `QwenAudioEncoder`: the same, cropped at the clip's own length (Qwen-Audio v1).
The chunked encoder of Qwen2.5-Omni lives in `chunked_audio_encoder.py`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange
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
    input_ids: Optional[Tensor] = None  # the prompt's ids, for projectors that place windows in their clip


@dataclass
class FrameLayout:
    """The frames an encoder runs on, and which of its conv positions are real audio."""

    features: Tensor  # [batch, n_mels, frames]
    n_frames: Tensor  # [batch] real frames per clip
    key_valid: Optional[Tensor] = None  # [batch, pos] after the stride-2 conv; None: all


class AudioEncoder(nn.Module):
    """Conv stem, positional table, `cfg.n_layers` blocks, optional pool and final norm;
    whole windows, no mask (Voxtral, DeSTA)."""

    def __init__(self, cfg: EncoderConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.conv1 = nn.Conv1d(cfg.n_mels, d, kernel_size=3, padding=1, dtype=cfg.dtype)
        self.conv2 = nn.Conv1d(d, d, kernel_size=3, stride=2, padding=1, dtype=cfg.dtype)
        pos = sinusoids(cfg.n_ctx, d) if cfg.positional_embedding_type == "sinusoidal" else torch.empty(cfg.n_ctx, d)
        self.W_pos = nn.Parameter(pos.to(torch.float32 if cfg.fp32_positions else cfg.dtype), requires_grad=False)
        self.blocks = nn.ModuleList(TransformerBlock(cfg, i) for i in range(cfg.n_layers))
        self.pool = nn.AvgPool1d(cfg.pool, cfg.pool) if cfg.pool else None
        self.ln_post = make_norm(cfg) if cfg.final_norm else None
        self.hook_conv1 = HookPoint()  # [batch, frames, d_model]
        self.hook_conv2 = HookPoint()  # [batch, pos, d_model]
        self.hook_pos_embed = HookPoint()  # [batch, pos, d_model]
        self.hook_embed = HookPoint()  # [batch, pos, d_model]
        self.hook_pooled = HookPoint()  # [batch, pos // pool, d_model]
        self.hook_out = HookPoint()  # [batch, pos_out, d_model]

    # ------------------------------------------------------------ the steps a variant may override
    def frame_layout(self, features: Tensor, frame_mask: Optional[Tensor]) -> FrameLayout:
        """Which frames to encode: here all of them (padding, if any, is encoded like audio)."""
        n = frame_mask.sum(-1) if frame_mask is not None else torch.full((features.shape[0],), features.shape[-1])
        return FrameLayout(features, n)

    def attention_mask(self, x: Tensor, layout: FrameLayout) -> Optional[Tensor]:
        """Additive mask over the conv positions (None: every position sees every position)."""
        n_pos = x.shape[1]
        return attention_bias(torch.arange(n_pos, device=x.device), n_pos, causal=False, key_valid=layout.key_valid,
                              dtype=x.dtype)

    def output_lengths(self, n_frames: Int[Tensor, "batch"]) -> tuple[Tensor, Tensor]:
        """Valid positions after the stride-2 conv, and after pooling."""
        after_conv = (n_frames - 1) // 2 + 1
        pool = self.cfg.pool or 1
        after_pool = (after_conv - pool) // pool + 1 if pool > 1 else after_conv
        return after_conv, after_pool

    # ------------------------------------------------------------ the shared path
    def stem(self, features: Tensor) -> Float[Tensor, "batch pos d_model"]:
        features = features.to(self.conv1.weight.dtype)
        x = self.hook_conv1(rearrange(F.gelu(self.conv1(features)), "b d t -> b t d"))
        return self.hook_conv2(rearrange(F.gelu(self.conv2(rearrange(x, "b t d -> b d t"))), "b d t -> b t d"))

    def embed_frames(self, layout: FrameLayout) -> Float[Tensor, "batch pos d_model"]:
        """The conv stem over the frames (a variant may cut them into chunks first)."""
        return self.stem(layout.features)

    def add_positions(self, x: Tensor) -> Tensor:
        batch, n_pos, _ = x.shape
        if n_pos > self.W_pos.shape[0]:
            raise ValueError(f"{2 * n_pos} mel frames give {n_pos} positions; the encoder has {self.W_pos.shape[0]}")
        pos = self.hook_pos_embed(self.W_pos[:n_pos].expand(batch, n_pos, -1))
        return (x + pos).to(x.dtype)  # float32 when the table is kept in float32

    def finish(self, x: Tensor) -> Tensor:
        """Pool, then the final norm, when the family has them."""
        if self.pool is not None:
            x = self.hook_pooled(rearrange(self.pool(rearrange(x, "b t d -> b d t")), "b d t -> b t d"))
        return self.ln_post(x) if self.ln_post is not None else x

    def forward(
        self,
        features: Float[Tensor, "batch n_mels frames"],
        frame_mask: Optional[Bool[Tensor, "batch frames"]] = None,
        keep_layers: tuple[int, ...] = (),
    ) -> EncoderOutput:
        frames = features.shape[-1]
        if self.cfg.n_frames is not None and frames != self.cfg.n_frames:
            raise ValueError(f"the encoder takes {self.cfg.n_frames} mel frames (the processor pads to them), got {frames}")
        layout = self.frame_layout(features, frame_mask)
        x = self.hook_embed(self.add_positions(self.embed_frames(layout)))
        mask = self.attention_mask(x, layout)
        layers = {}
        for i, block in enumerate(self.blocks):
            x = block(x, mask)
            if i in keep_layers:
                layers[i] = x
        _, lengths = self.output_lengths(layout.n_frames.to(x.device))
        return EncoderOutput(self.hook_out(self.finish(x)), lengths, layers)


class PaddedAudioEncoder(AudioEncoder):
    """Clips padded to 30 s with a frame mask (Qwen2-Audio, Audio Flamingo 3): padded frames are
    masked as keys, and cropped before the stem — exact, since a masked key changes nothing and
    the convolutions read at most `crop_extra` frames past a clip's end. Hooks see the longest
    clip's length, not 1500 positions."""

    crop_extra = 2

    def frame_layout(self, features: Tensor, frame_mask: Optional[Tensor]) -> FrameLayout:
        if frame_mask is None:
            return super().frame_layout(features, frame_mask)
        n_frames = frame_mask.sum(-1)
        if not bool((frame_mask.long().cumprod(-1).sum(-1) == n_frames).all()):
            raise ValueError("feature_attention_mask must mark the leading frames as valid (right padding)")
        t_max = (int(n_frames.max()) - 1) // 2 + 1
        cropped = features[..., : min(features.shape[-1], 2 * t_max + self.crop_extra)]
        valid, _ = self.output_lengths(n_frames.to(features.device))
        n_pos = (cropped.shape[-1] - 1) // 2 + 1
        key_valid = torch.arange(n_pos, device=features.device)[None, :] < valid[:, None]
        return FrameLayout(cropped, n_frames, key_valid)


class QwenAudioEncoder(PaddedAudioEncoder):
    """Qwen-Audio v1 crops the mel at twice the longest clip's conv length itself."""

    crop_extra = 0
