"""Unembedding (the LM head)."""

import torch
from jaxtyping import Float
from torch import Tensor, nn

from lalm_lens.config import BlockConfig


class Unembed(nn.Module):
    """Residual to logits: `W_U [d_model, d_vocab]`, `b_U [d_vocab]`."""

    def __init__(self, cfg: BlockConfig):
        super().__init__()
        self.W_U = nn.Parameter(torch.empty(cfg.d_model, cfg.d_vocab, dtype=cfg.dtype))
        self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab, dtype=cfg.dtype))

    def forward(self, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]:
        return resid @ self.W_U + self.b_U


class TiedUnembed(nn.Module):
    """Unembedding that shares the token embedding (`W_U = W_E.T`, no copy)."""

    def __init__(self, cfg: BlockConfig, embed: nn.Module):
        super().__init__()
        self._embed = [embed]  # a list, so the embedding is not registered twice
        self.b_U = nn.Parameter(torch.zeros(cfg.d_vocab, dtype=cfg.dtype))

    @property
    def W_U(self) -> Float[Tensor, "d_model d_vocab"]:
        return self._embed[0].W_E.T

    def forward(self, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]:
        return resid @ self.W_U + self.b_U
