"""Hooked building blocks, one per file, in HookedTransformer layout."""

from lalm_lens.components.attention import Attention
from lalm_lens.components.audio_encoder import AudioEncoder, EncoderOutput
from lalm_lens.components.block import TransformerBlock
from lalm_lens.components.embed import Embed
from lalm_lens.components.kv_cache import KVCache
from lalm_lens.components.layer_norm import LayerNorm
from lalm_lens.components.mlp import MLP, GatedMLP
from lalm_lens.components.projectors import LinearProjector, StackProjector
from lalm_lens.components.rms_norm import RMSNorm
from lalm_lens.components.rotary import Rotary
from lalm_lens.components.rotary_attention import GroupedQueryAttention, RotaryAttention
from lalm_lens.components.unembed import TiedUnembed, Unembed

__all__ = [
    "Attention", "AudioEncoder", "EncoderOutput", "TransformerBlock", "Embed", "KVCache", "LayerNorm", "MLP",
    "GatedMLP", "LinearProjector", "StackProjector", "RMSNorm", "Rotary", "GroupedQueryAttention",
    "RotaryAttention", "TiedUnembed", "Unembed",
]
