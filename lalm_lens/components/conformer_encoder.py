"""Granite Speech's CTC conformer encoder (`EncoderConfig.kind = "conformer"`).

Stacked log-mel frames `[batch, frames, n_mels]` (two 10 ms mel frames per row, 20 ms
per frame) `-> x @ W_in + b_in` (`hook_embed`) `->` conformer blocks; after block
`n_layers // 2` the CTC head's class probabilities are fed back:
`x += softmax(x @ W_ctc + b_ctc) @ W_ctc_back + b_ctc_back` (`hook_ctc_logits`,
`hook_ctc_feedback`). No frame is masked: padded frames of a batch are encoded like
audio, as in the original (each clip's own audio tokens are kept afterwards). The
output keeps every frame; `lengths` are the audio tokens of each clip when the
projector mask (`feature_attention_mask`) is given.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from lalm_lens.components.audio_encoder import EncoderOutput
from lalm_lens.components.conformer_block import ConformerBlock
from lalm_lens.config import ConformerConfig


class ConformerEncoder(nn.Module):
    def __init__(self, cfg: ConformerConfig):
        super().__init__()
        self.cfg = cfg
        d = cfg.d_model
        self.W_in = nn.Parameter(torch.empty(cfg.n_mels, d, dtype=cfg.dtype))
        self.b_in = nn.Parameter(torch.zeros(d, dtype=cfg.dtype))
        self.blocks = nn.ModuleList(ConformerBlock(cfg, i) for i in range(cfg.n_layers))
        self.W_ctc = nn.Parameter(torch.empty(d, cfg.d_ctc, dtype=cfg.dtype))
        self.b_ctc = nn.Parameter(torch.zeros(cfg.d_ctc, dtype=cfg.dtype))
        self.W_ctc_back = nn.Parameter(torch.empty(cfg.d_ctc, d, dtype=cfg.dtype))
        self.b_ctc_back = nn.Parameter(torch.zeros(d, dtype=cfg.dtype))
        self.ctc_after = cfg.n_layers // 2 - 1  # the block whose output feeds the CTC head
        self.hook_embed = HookPoint()  # [batch, frames, d_model]
        self.hook_ctc_logits = HookPoint()  # [batch, frames, d_ctc]
        self.hook_ctc_feedback = HookPoint()  # [batch, frames, d_model], added after block n_layers // 2 - 1
        self.hook_out = HookPoint()  # [batch, frames, d_model]

    def forward(
        self,
        features: Float[Tensor, "batch frames n_mels"],
        token_mask: Optional[Tensor] = None,
        keep_layers: tuple[int, ...] = (),
    ) -> EncoderOutput:
        if features.ndim != 3 or features.shape[-1] != self.cfg.n_mels:
            raise ValueError(f"input_features must be [batch, frames, {self.cfg.n_mels}] (the processor's stacked "
                             f"log-mel frames), got {tuple(features.shape)}")
        x = self.hook_embed(F.linear(features.to(self.W_in.dtype), self.W_in.T, self.b_in))
        layers = {}
        for i, block in enumerate(self.blocks):
            x = block(x)
            if i == self.ctc_after:
                probs = self.hook_ctc_logits(F.linear(x, self.W_ctc.T, self.b_ctc)).softmax(-1)
                x = x + self.hook_ctc_feedback(F.linear(probs, self.W_ctc_back.T, self.b_ctc_back))
            if i in keep_layers:
                layers[i] = x
        lengths = token_mask.sum(-1) if token_mask is not None else None
        return EncoderOutput(self.hook_out(x), lengths, layers)
