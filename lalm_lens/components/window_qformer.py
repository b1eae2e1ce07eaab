"""Granite Speech's projector: a BLIP-2 Q-Former over fixed windows of encoder frames.

The frames are zero-padded to whole windows of `window` frames; each window is read by
the same `n_queries` learned queries (`W_query`, LayerNorm'd first) through post-LN Q-Former
layers (self-attention among the queries, cross-attention to the window's frames, GELU
FFN), then `Linear` to the LM width: `n_queries` audio vectors per window, in order.
Granite's LM scales its whole input by `embedding_multiplier`; that scaling happens here,
after `hook_out`, so `hook_audio_embeds` holds the vectors as the residual stream does.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from lalm_lens.components.audio_encoder import EncoderOutput
from lalm_lens.components.layer_norm import LayerNorm
from lalm_lens.components.qformer import QFormerLayer, qformer_block_config
from lalm_lens.config import ProjectorConfig


class WindowQFormerProjector(nn.Module):
    """Hooks: `hook_in` `[clip, frames, d]`, `hook_windows` `[clip * window, frame, d]`, `ln_query.*`,
    `layers.{i}.*`, `hook_queries_out` `[clip, tokens, d]`, `hook_out` `[clip, tokens, d_lm]`."""

    def __init__(self, cfg: ProjectorConfig, dtype: torch.dtype = torch.float32):
        super().__init__()
        x = cfg.extra
        self.window, n_queries = x["window"], x["n_queries"]
        self.embedding_multiplier = x.get("embedding_multiplier", 1.0)
        block = qformer_block_config(cfg, dtype)
        self.W_query = nn.Parameter(torch.empty(1, n_queries, cfg.d_in, dtype=dtype))
        self.ln_query = LayerNorm(cfg.d_in, block.eps, dtype)
        self.layers = nn.ModuleList(QFormerLayer(block, i) for i in range(block.n_layers))
        self.W = nn.Parameter(torch.empty(cfg.d_in, cfg.d_out, dtype=dtype))
        self.b = nn.Parameter(torch.zeros(cfg.d_out, dtype=dtype))
        self.hook_in = HookPoint()
        self.hook_windows = HookPoint()
        self.hook_queries_out = HookPoint()
        self.hook_out = HookPoint()

    def forward(self, enc: EncoderOutput) -> tuple[Float[Tensor, "clip tokens d_out"], Tensor]:
        frames = self.hook_in(enc.hidden)
        clips, n, d = frames.shape
        n_windows = math.ceil(n / self.window)
        frames = F.pad(frames, (0, 0, 0, n_windows * self.window - n))
        windows = self.hook_windows(rearrange(frames, "b (m w) d -> (b m) w d", w=self.window))
        x = self.ln_query(self.W_query.to(windows.dtype)).expand(windows.shape[0], -1, -1)
        for layer in self.layers:
            x = layer(x, windows)
        x = self.hook_queries_out(rearrange(x, "(b m) q d -> b (m q) d", b=clips))
        out = self.hook_out(F.linear(x, self.W.T, self.b)) * self.embedding_multiplier
        lengths = enc.lengths if enc.lengths is not None else torch.full((clips,), out.shape[1], device=out.device)
        return out, lengths
