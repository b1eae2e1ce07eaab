"""Granite's attention: scores scaled by `attention_multiplier`, and a LoRA on some of q/k/v.

The adapter (`lora_q`, `lora_k`, `lora_v`: `LoRA` modules, as the checkpoint's adapter
targets) adds to its projection before `hook_q`/`hook_k`/`hook_v`, so those hooks see the
projection the model uses; `lora_*.hook_out` is the adapter's own contribution.
"""

from jaxtyping import Float
from torch import Tensor, nn

from lalm_lens.components.lora import LoRA
from lalm_lens.components.rotary_attention import GroupedQueryAttention, RotaryAttention
from lalm_lens.config import GraniteLMConfig


class GraniteAttentionMixin:
    """What Granite adds to a rotary attention: its score scale and the LoRA adapters."""

    def add_granite_parts(self, cfg: GraniteLMConfig) -> None:
        """Set `scale` from `attention_multiplier` and make one `LoRA` per adapter target."""
        if cfg.attention_multiplier is not None:
            self.scale = cfg.attention_multiplier
        self.lora_targets = tuple((cfg.lora or {}).get("targets", ()))
        for which in self.lora_targets:
            heads = self.n_kv_heads if which in "kv" else cfg.n_heads
            lora = LoRA(cfg.d_model, heads * cfg.d_head, cfg.lora["rank"], cfg.lora["scale"], cfg.dtype)
            setattr(self, f"lora_{which}", lora)

    def project_qkv(self, x: Float[Tensor, "batch pos d_model"], which: str) -> Float[Tensor, "batch pos heads d_head"]:
        """The projection plus the adapter's contribution where `which` is an adapter target (and it is on)."""
        out = super().project_qkv(x, which)
        if which.lower() in self.lora_targets:
            delta = getattr(self, f"lora_{which.lower()}")(x)
            if delta is not None:
                out = out + delta.view(out.shape)
        return out


class GraniteAttention(GraniteAttentionMixin, RotaryAttention):
    """Granite's attention with as many key/value heads as query heads."""

    def __init__(self, cfg: GraniteLMConfig, layer: int = 0):
        super().__init__(cfg, layer)
        self.add_granite_parts(cfg)


class GraniteGQAttention(GraniteAttentionMixin, GroupedQueryAttention):
    """Granite's attention with grouped key/value heads."""

    def __init__(self, cfg: GraniteLMConfig, layer: int = 0):
        super().__init__(cfg, layer)
        self.add_granite_parts(cfg)


def granite_attention(cfg: GraniteLMConfig, layer: int) -> nn.Module:
    """The Granite attention for `cfg`'s head counts."""
    return (GraniteGQAttention if cfg.n_key_value_heads < cfg.n_heads else GraniteAttention)(cfg, layer)
