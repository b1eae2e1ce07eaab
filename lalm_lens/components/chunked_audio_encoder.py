"""Qwen2.5-Omni's audio encoder: Whisper-style blocks attending within fixed windows.

Each clip's valid mel frames are cut into chunks of `window_frames` frames (7B:
n_window * 2 = 200, i.e. 2 s; the last chunk is shorter). The conv stem runs on
every chunk alone, zero-padded at its borders, and the sinusoidal positions
restart at 0 in every chunk (computed, not loaded: the checkpoint has no table).
The blocks run on `[batch, pos, d_model]`, each clip's conv frames in order (the
padded positions after them), with a block-diagonal mask: a frame sees only the
frames of its own chunk. Then AvgPool(2) over the whole clip, across chunk
borders (an odd last frame dropped), `ln_post`, and `proj` to the LM width
(`W_proj`, `b_proj`). Clips of any length are taken (no 30 s table); the blocks'
attention is dense over `[pos, pos]` with the mask (the original attends chunk by
chunk), so a long clip costs O(pos^2): 30 s = 1500 positions, 300 s = 15000.

Hooks beyond `AudioEncoder`'s: `hook_chunk_id` `[batch, pos]` (each position's
chunk, -1 past the clip; edit it to merge or split windows), `hook_chunk_mask`
`[batch, 1, pos, pos]` (the additive mask the blocks use), `hook_proj_in`
(after `ln_post`); `hook_out` is the projected output, `[batch, pos_out, d_out]`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from lalm_lens.components.audio_encoder import AudioEncoder, FrameLayout, sinusoids
from lalm_lens.config import EncoderConfig


@dataclass
class ChunkLayout(FrameLayout):
    """`features` cut to whole chunks, zero past each clip; `frame_valid` `[batch, frames]`."""

    frame_valid: Optional[Tensor] = None


class ChunkedAudioEncoder(AudioEncoder):
    """Chunked conv stem, per-chunk positions, block-diagonal attention, clip-wide pooling, projection."""

    def __init__(self, cfg: EncoderConfig):
        if not cfg.window_frames or cfg.window_frames % 2:
            raise ValueError(f"the chunked encoder needs an even window_frames, got {cfg.window_frames}")
        if cfg.d_out is None:
            raise ValueError("the chunked encoder needs d_out (the width of its output projection)")
        super().__init__(cfg)
        del self.W_pos  # positions restart in every chunk; computed in `add_positions`
        self.window = cfg.window_frames
        self.W_proj = nn.Parameter(torch.empty(cfg.d_model, cfg.d_out, dtype=cfg.dtype))
        self.b_proj = nn.Parameter(torch.zeros(cfg.d_out, dtype=cfg.dtype))
        self.hook_chunk_id = HookPoint()  # [batch, pos]: chunk index of each conv position, -1 past the clip
        self.hook_chunk_mask = HookPoint()  # [batch, 1, pos, pos]: 0 within a chunk, dtype min elsewhere
        self.hook_proj_in = HookPoint()  # [batch, pos_out, d_model]: after pool and ln_post

    def frame_layout(self, features: Tensor, frame_mask: Optional[Tensor]) -> ChunkLayout:
        frames = features.shape[-1]
        if frame_mask is None:  # the processor pads every clip to its window: without the mask, padding is audio
            raise ValueError(f"the chunked audio encoder of {self.cfg.kind!r} needs feature_attention_mask (the "
                             "processor returns it) to know which mel frames are audio")
        n_frames = frame_mask.long().sum(-1)
        if not bool((frame_mask.long().cumprod(-1).sum(-1) == n_frames).all()):
            raise ValueError("feature_attention_mask must mark the leading frames as valid (right padding)")
        width = -(-int(n_frames.max()) // self.window) * self.window  # whole chunks
        features = F.pad(features[..., :width], (0, max(0, width - frames)))
        frame_valid = torch.arange(width, device=features.device)[None, :] < n_frames[:, None].to(features.device)
        features = features.masked_fill(~frame_valid[:, None, :], 0.0)  # each chunk zero-padded, as in the original
        valid, _ = self.output_lengths(n_frames.to(features.device))
        key_valid = torch.arange(int(valid.max()), device=features.device)[None, :] < valid[:, None]
        return ChunkLayout(features, n_frames, key_valid, frame_valid)

    def embed_frames(self, layout: ChunkLayout) -> Float[Tensor, "batch pos d_model"]:
        """conv1 + GELU (zero past the clip) and conv2 + GELU on every chunk alone, laid back in clip order."""
        batch, w = layout.features.shape[0], self.window
        x = rearrange(layout.features.to(self.conv1.weight.dtype), "b m (c w) -> (b c) m w", w=w)
        valid = rearrange(layout.frame_valid, "b (c w) -> (b c) 1 w", w=w)
        x = F.gelu(self.conv1(x)) * valid
        x = self.hook_conv1(rearrange(x, "(b c) d w -> b (c w) d", b=batch))
        x = F.gelu(self.conv2(rearrange(x, "b (c w) d -> (b c) d w", w=w)))
        x = rearrange(x, "(b c) d t -> b (c t) d", b=batch)[:, : layout.key_valid.shape[1]]
        return self.hook_conv2(x)

    def add_positions(self, x: Tensor) -> Tensor:
        batch, n_pos, d = x.shape
        per_chunk = sinusoids(self.window // 2, d).to(device=x.device, dtype=x.dtype)
        table = per_chunk.repeat(-(-n_pos // per_chunk.shape[0]), 1)[:n_pos]
        return x + self.hook_pos_embed(table.expand(batch, n_pos, d))

    def window_of(self, positions: Tensor) -> Tensor:
        """The attention window of each conv position (here: its chunk)."""
        return positions // (self.window // 2)

    def attention_mask(self, x: Tensor, layout: ChunkLayout) -> Tensor:
        """Block-diagonal: a query sees the valid keys of its own chunk."""
        chunk = self.window_of(torch.arange(x.shape[1], device=x.device))
        ids = self.hook_chunk_id(torch.where(layout.key_valid, chunk[None, :], -1))
        allowed = (ids[:, :, None] == ids[:, None, :]) & (ids[:, None, :] >= 0)
        bias = torch.zeros(allowed.shape, dtype=x.dtype, device=x.device)
        bias.masked_fill_(~allowed, torch.finfo(x.dtype).min)
        return self.hook_chunk_mask(bias[:, None])

    def finish(self, x: Tensor) -> Tensor:
        """Pool over the clip, `ln_post`, then the projection to the LM width."""
        x = self.hook_proj_in(super().finish(x))
        return F.linear(x, self.W_proj.T, self.b_proj)
