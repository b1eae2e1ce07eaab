"""One conformer block (Macaron style): half a feed-forward, attention, conv, half a feed-forward, LayerNorm.

`x += ff1(x) / 2; x += attn(x); x += conv(x); x += ff2(x) / 2; x = ln_post(x)`. Each
sub-module's contribution is hooked as it joins the residual (`hook_ff1_out` is the
halved output), and the residual after each step.
"""

from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from lalm_lens.components.conformer_attention import ConformerAttention
from lalm_lens.components.conformer_conv import ConformerConv
from lalm_lens.components.conformer_feed_forward import ConformerFeedForward
from lalm_lens.components.layer_norm import LayerNorm
from lalm_lens.config import ConformerConfig


class ConformerBlock(nn.Module):
    def __init__(self, cfg: ConformerConfig, layer: int = 0):
        super().__init__()
        self.layer = layer
        self.ff1 = ConformerFeedForward(cfg)
        self.attn = ConformerAttention(cfg)
        self.conv = ConformerConv(cfg)
        self.ff2 = ConformerFeedForward(cfg)
        self.ln_post = LayerNorm(cfg.d_model, cfg.eps, cfg.dtype)
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        self.hook_ff1_out = HookPoint()  # [batch, pos, d_model], ff1(x) / 2
        self.hook_resid_ff1 = HookPoint()  # [batch, pos, d_model]
        self.hook_attn_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_attn = HookPoint()  # [batch, pos, d_model]
        self.hook_conv_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_conv = HookPoint()  # [batch, pos, d_model]
        self.hook_ff2_out = HookPoint()  # [batch, pos, d_model], ff2(x) / 2
        self.hook_resid_ff2 = HookPoint()  # [batch, pos, d_model], before ln_post
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model], the block's output

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        x = self.hook_resid_pre(x)
        x = self.hook_resid_ff1(x + self.hook_ff1_out(0.5 * self.ff1(x)))
        x = self.hook_resid_attn(x + self.hook_attn_out(self.attn(x)))
        x = self.hook_resid_conv(x + self.hook_conv_out(self.conv(x)))
        x = self.hook_resid_ff2(x + self.hook_ff2_out(0.5 * self.ff2(x)))
        return self.hook_resid_post(self.ln_post(x))
