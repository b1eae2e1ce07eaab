"""Rotary time embedding on audio vectors (Music Flamingo), hooked.

Music Flamingo rotates the first `rot_dim` channels of each encoder output
vector (after pooling and the final norm, before the projector) by angles
that depend on *when* the vector was heard: the clip is cut into 30 s
windows; a vector at index `i` of window `w` of its clip sits at
`t = (w * window_tokens + i) * step` seconds (`step` = 0.04 s: 10 ms frames,
stride-2 conv, pool 2). Two axial frequency sets, one over the window index
(`w / n_cached`) and one over the in-window index (`i / n_cached * 2π`), are
concatenated and both scaled by `-2π t`; pairs of adjacent channels rotate
(interleaved form), the rest pass through. `n_cached` is the checkpoint's
`max_position_embeddings`, which the config sets to `rope_theta`.

The angles are built in float32 exactly as `transformers` builds them (they
reach ~1e4 rad for clips of 20 minutes, so the order of operations matters)
and the rotation runs in float64, as the original does.

Hooks: `hook_time` `[clip_window, pos]` (seconds: edit it to move audio in
time; zeros disable the embedding) and `hook_out` `[clip_window, pos, d]`.
"""

from __future__ import annotations

import math

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint


def window_index(
    input_ids: Int[Tensor, "batch seq"], audio_token_id: int, row_lengths: Int[Tensor, "rows"]
) -> Int[Tensor, "rows"]:
    """The index of each feature row (a 30 s window) within its clip.

    Clips are the runs of consecutive audio tokens in `input_ids` (row-major, the order the
    vectors are written in); `row_lengths` are the audio vectors each window gives.
    """
    mask = torch.nn.functional.pad((input_ids == audio_token_id).int(), (1, 1))
    edges = mask.diff(dim=1)
    run_lengths = (edges == -1).nonzero()[:, 1] - (edges == 1).nonzero()[:, 1]
    row_lengths = row_lengths.to(run_lengths.device)
    if int(run_lengths.sum()) != int(row_lengths.sum()):
        raise ValueError(f"input_ids hold {int(run_lengths.sum())} audio tokens but the audio gives "
                         f"{int(row_lengths.sum())} vectors (build the prompt with model.prepare() or the processor)")
    row_start = torch.cumsum(row_lengths, 0) - row_lengths  # first token of each window
    clip = torch.searchsorted(torch.cumsum(run_lengths, 0), row_start, right=True)
    first_row = torch.searchsorted(clip, torch.arange(len(run_lengths), device=clip.device))
    return torch.arange(len(row_lengths), device=clip.device) - first_row[clip]


class RotaryTimeEmbedding(nn.Module):
    """Rotates audio vectors by their time in the clip (see the module docstring)."""

    def __init__(self, d_model: int, base: float, rot_fraction: float, n_cached: float, step: float,
                 window_tokens: int):
        super().__init__()
        self.rot_dim = int(d_model * rot_fraction)  # rotated channels per axis before doubling
        self.base, self.n_cached, self.step, self.window_tokens = base, n_cached, step, window_tokens
        self.hook_time = HookPoint()  # [clip_window, pos], seconds
        self.hook_out = HookPoint()  # [clip_window, pos, d_model]

    def inverse_frequencies(self, device) -> Tensor:
        exponents = torch.arange(0, self.rot_dim, 2, dtype=torch.float, device=device) / self.rot_dim
        return 1.0 / (self.base ** exponents)

    def times(self, windows: Int[Tensor, "rows"], n_pos: int) -> Float[Tensor, "rows pos"]:
        """Seconds of each vector from the start of its clip (full 30 s windows before it)."""
        offsets = torch.arange(n_pos, device=windows.device, dtype=torch.float32) * self.step
        return windows[:, None] * self.window_tokens * self.step + offsets  # int * float -> float32, as the original

    def angles(self, time: Float[Tensor, "rows pos"]) -> Float[Tensor, "rows pos rot"]:
        inv_freq = self.inverse_frequencies(time.device)
        positions = torch.arange(int(self.n_cached), device=time.device, dtype=torch.float) / self.n_cached * (2 * math.pi)
        in_window = (positions[:, None] * inv_freq).repeat_interleave(2, dim=-1)[: time.shape[1]]
        window_seconds = self.step * self.window_tokens
        window_pos = torch.round(time[:, 0] / window_seconds) / self.n_cached
        across = (window_pos[:, None] * inv_freq).repeat_interleave(2, dim=-1)
        across, in_window = torch.broadcast_tensors(across[:, None, :], in_window[None])
        return torch.cat((across, in_window), dim=-1) * (-time * 2 * math.pi)[..., None]

    def forward(self, x: Float[Tensor, "rows pos d_model"], windows: Int[Tensor, "rows"]) -> Float[Tensor, "rows pos d_model"]:
        time = self.hook_time(self.times(windows.to(x.device), x.shape[1]))
        angles = self.angles(time.float())
        x64, cos, sin = x.double(), angles.cos().double(), angles.sin().double()
        rot = cos.shape[-1]
        head = x64[..., :rot]
        pairs = head.unflatten(-1, (-1, 2))
        rotated = torch.stack((-pairs[..., 1], pairs[..., 0]), dim=-1).flatten(-2)
        out = torch.cat((head * cos + rotated * sin, x64[..., rot:]), dim=-1)
        return self.hook_out(out.to(x.dtype))
