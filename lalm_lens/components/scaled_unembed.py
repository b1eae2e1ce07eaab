"""Unembeddings whose logits are divided by a constant (Granite's `logits_scaling`)."""

from jaxtyping import Float
from torch import Tensor, nn

from lalm_lens.components.unembed import TiedUnembed, Unembed
from lalm_lens.config import GraniteLMConfig


class ScaledUnembed(Unembed):
    def __init__(self, cfg: GraniteLMConfig):
        super().__init__(cfg)
        self.logits_scaling = cfg.logits_scaling

    def forward(self, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]:
        return super().forward(resid) / self.logits_scaling


class ScaledTiedUnembed(TiedUnembed):
    def __init__(self, cfg: GraniteLMConfig, embed: nn.Module):
        super().__init__(cfg, embed)
        self.logits_scaling = cfg.logits_scaling

    def forward(self, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]:
        return super().forward(resid) / self.logits_scaling
