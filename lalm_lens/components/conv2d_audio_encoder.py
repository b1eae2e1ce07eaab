"""Qwen3-Omni's audio encoder: a Conv2d stem on 1 s chunks, attention windows of 8 s, an MLP head.

Differences from the Qwen2.5-Omni chunked encoder (`ChunkedAudioEncoder`), each one
overridden step:
- stem (`embed_frames`): each chunk of `window_frames` mel frames (n_window * 2 = 100,
  1 s) is an image `[1, n_mels, frames]`; three Conv2d (3×3, stride 2, padding 1,
  `conv_channels` = 480 channels, GELU each) shrink mels and time 8×, then the
  channels × mel bins of each time step are flattened (channel-major) and projected by
  `W_conv_out` (`[channels * mel_out, d_model]`, no bias): 13 positions per full chunk;
- positions (`add_positions`): sinusoids restart in every chunk (13 per chunk);
- attention (`attention_mask`): block-diagonal over windows of
  `attention_window_frames // window_frames` chunks (n_window_infer 800: 8 chunks =
  104 positions), counted from each clip's start;
- no pooling; `ln_post`, then `W_proj1`/`b_proj1`, GELU, `W_proj2`/`b_proj2` to the LM width.
The original zero-pads every chunk to the longest chunk **of the whole batch** before the
convolutions, so a clip shorter than one chunk is convolved at the width of the longest
clip (or of a full chunk); this encoder does the same (`frame_layout`), which makes a
short clip's last vectors depend on the batch exactly as in the original.

Hooks beyond `AudioEncoder`'s: `hook_conv1|2|3` `[batch * chunks, channels, mels', time']`
(after each Conv2d + GELU), `hook_conv_out` `[batch, pos, d_model]` (after `W_conv_out`,
the first `[batch, pos, d]` state; `hook_conv2` of the parent is not used),
`hook_chunk_id` `[batch, pos]` (here: the attention window of each position, -1 past the
clip), `hook_chunk_mask`, `hook_proj_in` (after `ln_post`), `hook_proj_mid` (after GELU).
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from lalm_lens.components.audio_encoder import AudioEncoder, sinusoids
from lalm_lens.components.chunked_audio_encoder import ChunkedAudioEncoder, ChunkLayout
from lalm_lens.config import EncoderConfig


def conv_length(n: Tensor | int) -> Tensor | int:
    """Positions three stride-2 convolutions (k3, p1) leave of `n` frames (0 for 0)."""
    for _ in range(3):
        n = (n - 1) // 2 + 1
    return n


class Conv2dChunkedAudioEncoder(ChunkedAudioEncoder):
    """Chunked Conv2d stem, per-chunk positions, windowed attention, `ln_post` + MLP head."""

    def __init__(self, cfg: EncoderConfig):
        if not cfg.conv_channels or not cfg.attention_window_frames:
            raise ValueError("the Conv2d chunked encoder needs conv_channels and attention_window_frames")
        super().__init__(cfg)
        del self.conv1, self.conv2, self.W_proj, self.b_proj
        c, d = cfg.conv_channels, cfg.d_model
        self.conv2d1 = nn.Conv2d(1, c, 3, 2, padding=1, dtype=cfg.dtype)
        self.conv2d2 = nn.Conv2d(c, c, 3, 2, padding=1, dtype=cfg.dtype)
        self.conv2d3 = nn.Conv2d(c, c, 3, 2, padding=1, dtype=cfg.dtype)
        self.W_conv_out = nn.Parameter(torch.empty(c * conv_length(cfg.n_mels), d, dtype=cfg.dtype))
        self.W_proj1 = nn.Parameter(torch.empty(d, d, dtype=cfg.dtype))
        self.b_proj1 = nn.Parameter(torch.zeros(d, dtype=cfg.dtype))
        self.W_proj2 = nn.Parameter(torch.empty(d, cfg.d_out, dtype=cfg.dtype))
        self.b_proj2 = nn.Parameter(torch.zeros(cfg.d_out, dtype=cfg.dtype))
        self.chunk_positions = conv_length(self.window)  # 13 for 100-frame chunks
        self.span = self.chunk_positions * (cfg.attention_window_frames // self.window)  # positions per window
        if self.span < 1:
            raise ValueError(f"attention_window_frames ({cfg.attention_window_frames}) must be at least "
                             f"window_frames ({self.window})")
        self.hook_conv3 = HookPoint()  # [batch * chunks, channels, mels', time']
        self.hook_conv_out = HookPoint()  # [batch, pos, d_model]
        self.hook_proj_mid = HookPoint()  # [batch, pos_out, d_model]

    def output_lengths(self, n_frames: Int[Tensor, "batch"]) -> tuple[Tensor, Tensor]:
        """Positions per clip: 13 per full chunk, plus the partial last chunk's (no pooling)."""
        full, rest = n_frames // self.window, n_frames % self.window
        n = full * self.chunk_positions + conv_length(rest)
        return n, n

    def frame_layout(self, features: Tensor, frame_mask: Optional[Tensor]) -> ChunkLayout:
        """Whole chunks, zero past each clip; chunks as wide as the batch's longest chunk (see the module doc)."""
        layout = super().frame_layout(features, frame_mask)
        width = min(self.window, int(layout.n_frames.max()))
        if width < self.window:  # one chunk per clip, all convolved at the longest clip's width
            layout.features, layout.frame_valid = layout.features[..., :width], layout.frame_valid[:, :width]
        return layout

    def embed_frames(self, layout: ChunkLayout) -> Float[Tensor, "batch pos d_model"]:
        batch, width = layout.features.shape[0], min(self.window, layout.features.shape[-1])
        x = rearrange(layout.features.to(self.conv2d1.weight.dtype), "b m (c w) -> (b c) 1 m w", w=width)
        x = self.hook_conv1(F.gelu(self.conv2d1(x)))
        x = self.hook_conv2(F.gelu(self.conv2d2(x)))
        x = self.hook_conv3(F.gelu(self.conv2d3(x)))
        x = rearrange(x, "n c f t -> n t (c f)") @ self.W_conv_out
        x = rearrange(x, "(b c) t d -> b (c t) d", b=batch)[:, : layout.key_valid.shape[1]]
        return self.hook_conv_out(x)

    def add_positions(self, x: Tensor) -> Tensor:
        """Sinusoids restarting every chunk (a clip shorter than a chunk never reaches the restart)."""
        batch, n_pos, d = x.shape
        per_chunk = sinusoids(self.chunk_positions, d).to(device=x.device, dtype=x.dtype)
        table = per_chunk.repeat(-(-n_pos // self.chunk_positions), 1)[:n_pos]
        return x + self.hook_pos_embed(table.expand(batch, n_pos, d))

    def window_of(self, positions: Tensor) -> Tensor:
        return positions // self.span

    def finish(self, x: Tensor) -> Tensor:
        """`ln_post`, then `proj1`, GELU, `proj2` (no pooling)."""
        x = self.hook_proj_in(AudioEncoder.finish(self, x))
        x = self.hook_proj_mid(F.gelu(F.linear(x, self.W_proj1.T, self.b_proj1)))
        return F.linear(x, self.W_proj2.T, self.b_proj2)
