"""Granite's decoder block: Llama's, with each sub-layer's output scaled by `residual_multiplier`.

`hook_attn_out` / `hook_mlp_out` hold the scaled outputs (what joins the residual), so
`resid_mid = resid_pre + attn_out` holds as in every other block.
"""

from typing import Optional

from jaxtyping import Float
from torch import Tensor

from lalm_lens.components.block import TransformerBlock
from lalm_lens.components.granite_attention import granite_attention
from lalm_lens.components.past_kv import PastKV
from lalm_lens.config import GraniteLMConfig


class GraniteBlock(TransformerBlock):
    def __init__(self, cfg: GraniteLMConfig, layer: int):
        super().__init__(cfg, layer)
        self.attn = granite_attention(cfg, layer)
        self.residual_multiplier = cfg.residual_multiplier

    def forward(
        self,
        resid: Float[Tensor, "batch pos d_model"],
        mask: Optional[Tensor] = None,
        rope: Optional[tuple[Tensor, Tensor]] = None,
        kv_cache: Optional[PastKV] = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        m = self.residual_multiplier
        resid = self.hook_resid_pre(resid)
        resid = self.hook_resid_mid(resid + self.hook_attn_out(self.attn(self.ln1(resid), mask, rope, kv_cache) * m))
        return self.hook_resid_post(resid + self.hook_mlp_out(self.mlp(self.ln2(resid)) * m))
