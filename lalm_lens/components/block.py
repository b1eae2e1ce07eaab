"""The pre-norm transformer block shared by the audio encoder and the LM."""

from typing import Optional

from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from lalm_lens.components.attention import Attention
from lalm_lens.components.kv_cache import KVCache
from lalm_lens.components.layer_norm import LayerNorm
from lalm_lens.components.mlp import MLP, GatedMLP
from lalm_lens.components.moe import MoEMLP
from lalm_lens.components.qk_norm_attention import QKNormAttention
from lalm_lens.components.rms_norm import RMSNorm
from lalm_lens.components.rotary_attention import GroupedQueryAttention, RotaryAttention
from lalm_lens.config import BlockConfig


def make_norm(cfg: BlockConfig, d_model: Optional[int] = None) -> nn.Module:
    norm = {"LN": LayerNorm, "RMS": RMSNorm}[cfg.normalization_type]
    return norm(d_model or cfg.d_model, cfg.eps, cfg.dtype)


def make_attention(cfg: BlockConfig, layer: int) -> Attention:
    if cfg.positional_embedding_type != "rotary":
        return Attention(cfg, layer)
    if cfg.qk_norm:
        return QKNormAttention(cfg, layer)
    if cfg.n_key_value_heads < cfg.n_heads:
        return GroupedQueryAttention(cfg, layer)
    return RotaryAttention(cfg, layer)


def make_mlp(cfg: BlockConfig, layer: int) -> nn.Module:
    """A mixture of experts in the layers `cfg.moe_layers` names, else a gated or plain MLP."""
    if cfg.moe_layers is not None and layer in cfg.moe_layers:
        return MoEMLP(cfg)
    return GatedMLP(cfg) if cfg.gated_mlp else MLP(cfg)


class TransformerBlock(nn.Module):
    """`resid + attn(ln1(resid))`, then `+ mlp(ln2(resid))`, every step hooked."""

    def __init__(self, cfg: BlockConfig, layer: int):
        super().__init__()
        self.ln1 = make_norm(cfg)
        self.attn = make_attention(cfg, layer)
        self.ln2 = make_norm(cfg)
        self.mlp = make_mlp(cfg, layer)
        self.hook_resid_pre = HookPoint()  # [batch, pos, d_model]
        self.hook_attn_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_mid = HookPoint()  # [batch, pos, d_model]
        self.hook_mlp_out = HookPoint()  # [batch, pos, d_model]
        self.hook_resid_post = HookPoint()  # [batch, pos, d_model]

    def forward(
        self,
        resid: Float[Tensor, "batch pos d_model"],
        mask: Optional[Tensor] = None,
        rope: Optional[tuple[Tensor, Tensor]] = None,
        kv_cache: Optional[KVCache] = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        resid = self.hook_resid_pre(resid)
        attn_out = self.hook_attn_out(self.attn(self.ln1(resid), mask, rope, kv_cache))
        resid = self.hook_resid_mid(resid + attn_out)
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(resid)))
        return self.hook_resid_post(resid + mlp_out)
