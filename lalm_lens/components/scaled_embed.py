"""Token embedding scaled by a constant (Granite's `embedding_multiplier`)."""

from jaxtyping import Float, Int
from torch import Tensor

from lalm_lens.components.embed import Embed
from lalm_lens.config import GraniteLMConfig


class ScaledEmbed(Embed):
    """`W_E[tokens] * embedding_multiplier` (audio vectors are scaled by their projector)."""

    def __init__(self, cfg: GraniteLMConfig):
        super().__init__(cfg)
        self.multiplier = cfg.embedding_multiplier

    def forward(self, tokens: Int[Tensor, "batch pos"]) -> Float[Tensor, "batch pos d_model"]:
        return super().forward(tokens) * self.multiplier
