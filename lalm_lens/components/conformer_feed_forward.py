"""The conformer's feed-forward module: `LayerNorm -> Linear -> SiLU -> Linear` (each block has two, halved)."""

from jaxtyping import Float
from torch import Tensor

from lalm_lens.components.layer_norm import LayerNorm
from lalm_lens.components.mlp import MLP
from lalm_lens.config import BlockConfig


class ConformerFeedForward(MLP):
    """`MLP(ln(x))` with its own pre-norm; hooks `ln.*`, `hook_pre`, `hook_post` as in the MLP."""

    def __init__(self, cfg: BlockConfig):
        super().__init__(cfg)
        self.ln = LayerNorm(cfg.d_model, cfg.eps, cfg.dtype)

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        return super().forward(self.ln(x))
