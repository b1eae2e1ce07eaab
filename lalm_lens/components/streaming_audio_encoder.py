"""Voxtral Realtime's streaming audio encoder: causal everywhere, so it can run as audio arrives.

log-mel `[batch, n_mels, frames]` -> causal conv (k3 s1) + GELU -> causal conv
(k3 s2) + GELU (`conv.CausalConv1d`: left padding only) -> pre-RMSNorm blocks
with rotary positions (`rotary_base` of the encoder), causal attention limited
to the last `sliding_window` positions, gated SiLU MLPs -> final RMSNorm. No
positional table, no pooling, no padding mask: a frame never sees later frames,
so padding at the end changes nothing before it. Hooks as `AudioEncoder`'s
(`hook_conv1`, `hook_conv2`, `hook_embed`, `blocks.{i}.*`, `ln_post.*`,
`hook_out`); `hook_pos_embed` and `hook_pooled` never fire.
"""

from __future__ import annotations

from typing import Optional

import torch
from jaxtyping import Bool, Float
from torch import Tensor

from lalm_lens.components.audio_encoder import AudioEncoder, EncoderOutput
from lalm_lens.components.causal_conv import CausalConv1d
from lalm_lens.components.masks import attention_bias
from lalm_lens.components.rotary import Rotary
from lalm_lens.config import EncoderConfig


class StreamingAudioEncoder(AudioEncoder):
    """Causal conv stem, rotary sliding-window causal blocks, final RMSNorm (Voxtral Realtime)."""

    def __init__(self, cfg: EncoderConfig):
        if cfg.positional_embedding_type != "rotary" or not cfg.causal:
            raise ValueError("the streaming encoder needs causal rotary attention (positional_embedding_type='rotary')")
        super().__init__(cfg)
        del self.W_pos  # positions are rotary, inside the attention
        d = cfg.d_model
        self.conv1 = CausalConv1d(cfg.n_mels, d, kernel_size=3, dtype=cfg.dtype)
        self.conv2 = CausalConv1d(d, d, kernel_size=3, stride=2, dtype=cfg.dtype)
        self.rotary = Rotary(cfg.d_head, cfg.rotary_base, cfg.rope_scaling)

    def forward(
        self,
        features: Float[Tensor, "batch n_mels frames"],
        frame_mask: Optional[Bool[Tensor, "batch frames"]] = None,
        keep_layers: tuple[int, ...] = (),
    ) -> EncoderOutput:
        if frame_mask is not None:
            raise ValueError("the streaming encoder takes no feature_attention_mask: it is causal, so padding after "
                             "the audio changes nothing before it (drop the mask)")
        x = self.hook_embed(self.stem(features))
        batch, n_pos, _ = x.shape
        pos = torch.arange(n_pos, device=x.device)
        mask = attention_bias(pos, n_pos, causal=True, sliding_window=self.cfg.sliding_window, dtype=x.dtype)
        rope = self.rotary.cos_sin(pos[None], x.dtype)
        layers = {}
        for i, block in enumerate(self.blocks):
            x = block(x, mask, rope)
            if i in keep_layers:
                layers[i] = x
        lengths = torch.full((batch,), n_pos, device=x.device)
        return EncoderOutput(self.hook_out(self.finish(x)), lengths, layers)
