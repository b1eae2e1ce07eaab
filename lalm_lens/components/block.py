"""The pre-norm transformer block shared by the audio encoder and the LM."""

from typing import Optional

from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from lalm_lens.components.attention import Attention
from lalm_lens.components.past_kv import PastKV
from lalm_lens.components.layer_norm import LayerNorm
from lalm_lens.components.mlp import MLP, GatedMLP
from lalm_lens.components.moe import MoEMLP
from lalm_lens.components.qk_norm_attention import QKNormAttention
from lalm_lens.components.rms_norm import RMSNorm
from lalm_lens.components.rotary_attention import GroupedQueryAttention, RotaryAttention
from lalm_lens.config import BlockConfig


def make_norm(cfg: BlockConfig, d_model: Optional[int] = None) -> nn.Module:
    """The block's LayerNorm or RMSNorm (`cfg.normalization_type`)."""
    norm = {"LN": LayerNorm, "RMS": RMSNorm}[cfg.normalization_type]
    return norm(d_model or cfg.d_model, cfg.eps, cfg.dtype)


def make_attention(cfg: BlockConfig, layer: int) -> Attention:
    """Plain, rotary, grouped-query or q/k-normed attention, as `cfg` says."""
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
        # TransformerLens's optional hook points, active only when switched on (HookedLALM.set_use_*):
        self.hook_q_input = HookPoint()  # [batch, pos, head, d_model], cfg.use_split_qkv_input
        self.hook_k_input = HookPoint()  # [batch, pos, kv_head, d_model] (one per key/value head under GQA)
        self.hook_v_input = HookPoint()  # [batch, pos, kv_head, d_model]
        self.hook_mlp_in = HookPoint()  # [batch, pos, d_model], cfg.use_hook_mlp_in
        self.cfg = cfg

    def forward(
        self,
        resid: Float[Tensor, "batch pos d_model"],
        mask: Optional[Tensor] = None,
        rope: Optional[tuple[Tensor, Tensor]] = None,
        kv_cache: Optional[PastKV] = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        resid = self.hook_resid_pre(resid)
        attn_out = self.hook_attn_out(self.attention(resid, mask, rope, kv_cache))
        resid = self.hook_resid_mid(resid + attn_out)
        mlp_in = self.hook_mlp_in(resid.clone()) if self.cfg.use_hook_mlp_in else resid
        mlp_out = self.hook_mlp_out(self.mlp(self.ln2(mlp_in)))
        return self.hook_resid_post(resid + mlp_out)

    def attention(self, resid: Tensor, mask: Optional[Tensor], rope, kv_cache: Optional[PastKV]) -> Tensor:
        """`attn(ln1(resid))`; with `use_split_qkv_input`, each head's q/k/v input is its own copy of
        `resid` (hooked before `ln1`), as in TransformerLens."""
        if not self.cfg.use_split_qkv_input:
            return self.attn(self.ln1(resid), mask, rope, kv_cache)
        per_head = lambda n: resid[:, :, None, :].expand(-1, -1, n, -1).clone()  # noqa: E731
        q_in = self.hook_q_input(per_head(self.cfg.n_heads))
        k_in = self.hook_k_input(per_head(self.attn.n_kv_heads))
        v_in = self.hook_v_input(per_head(self.attn.n_kv_heads))
        return self.attn.forward_split(self.ln1(q_in), self.ln1(k_in), self.ln1(v_in), mask, rope, kv_cache)
