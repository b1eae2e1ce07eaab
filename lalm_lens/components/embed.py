"""Token embedding."""

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn

from lalm_lens.config import BlockConfig


class Embed(nn.Module):
    """Token ids to vectors: `W_E [d_vocab, d_model]`."""

    def __init__(self, cfg: BlockConfig):
        super().__init__()
        self.W_E = nn.Parameter(torch.empty(cfg.d_vocab, cfg.d_model, dtype=cfg.dtype))

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        return self.W_E[tokens]
