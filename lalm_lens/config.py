"""Configuration dataclasses.

`BlockConfig` extends TransformerLens's own `TransformerLensConfig`, so the LM
backbone's `cfg` is what TransformerLens utilities (`ActivationCache`,
`patching`) expect. The same class configures the audio encoder's blocks.
`LALMConfig` ties encoder, projector and LM together; each family's converter
in `weight_conversion/` builds one from the checkpoint's `config.json`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, Optional

from transformer_lens.config import TransformerLensConfig


@dataclass
class BlockConfig(TransformerLensConfig):
    """A stack of transformer blocks (LM backbone or audio encoder).

    TransformerLens fields used here: d_model, d_head, n_layers, n_ctx, n_heads,
    d_mlp, d_vocab, n_key_value_heads, normalization_type ("LN" | "RMS"),
    act_fn ("gelu" | "silu"), gated_mlp, positional_embedding_type
    ("rotary" | "learned" | "sinusoidal"), eps.
    """

    causal: bool = True
    rotary_base: float = 10000.0
    # llama3-style frequency scaling: dict(factor, low_freq_factor,
    # high_freq_factor, original_max_position_embeddings), or None.
    rope_scaling: Optional[dict] = None
    sliding_window: Optional[int] = None
    tie_word_embeddings: bool = False
    # Multimodal RoPE (Qwen2.5-Omni): rotary frequencies drawn from three position streams
    # (time, height, width) in sections of these sizes (sum = d_head / 2); None: 1-D RoPE.
    mrope_section: Optional[list[int]] = None
    # Multimodal RoPE with the streams interleaved frequency by frequency (Qwen3-Omni), not in sections.
    mrope_interleaved: bool = False
    # RMSNorm of every query and key head before RoPE (Qwen3: `q_norm`, `k_norm` over d_head).
    qk_norm: bool = False
    # Mixture of experts (Qwen3-Omni thinker; `components/moe.py`): blocks in `moe_layers` replace the MLP
    # by `n_experts` gated experts of width `d_expert`, `experts_per_token` chosen per token by a router
    # (softmax, top-k, renormalised if `norm_topk_prob`); None: no MoE layer.
    n_experts: Optional[int] = None
    experts_per_token: int = 1
    d_expert: Optional[int] = None
    norm_topk_prob: bool = True
    moe_layers: Optional[list[int]] = None
    # Hook each expert's weighted output (`mlp.hook_expert_out`, [batch, pos, n_experts, d_model]); costs memory.
    use_expert_outputs: bool = False
    # TransformerLens's optional hook points (HookedLALM.set_use_split_qkv_input / set_use_hook_mlp_in)
    use_split_qkv_input: bool = False
    use_hook_mlp_in: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.n_key_value_heads is None:
            self.n_key_value_heads = self.n_heads
        if self.n_heads % self.n_key_value_heads:
            raise ValueError(
                f"n_heads ({self.n_heads}) must be a multiple of n_key_value_heads "
                f"({self.n_key_value_heads})"
            )
        self.uses_rms_norm = self.normalization_type == "RMS"
        self.final_rms = self.uses_rms_norm


@dataclass
class EncoderConfig(BlockConfig):
    """Whisper-style audio encoder: conv stem, positions, blocks, pool, norm.

    `kind` names the encoder class (`lalm_lens.components.encoders.ENCODERS`):
    "whisper" encodes whole 30 s windows with no mask (Voxtral, DeSTA), "padded"
    crops padded frames and masks them as keys (Qwen2-Audio, Audio Flamingo 3),
    "qwen_audio" crops at the clip's own length (Qwen-Audio v1), "chunked" attends
    within fixed windows of frames (Qwen2.5-Omni).
    """

    kind: str = "whisper"
    n_mels: int = 128
    pool: Optional[int] = None  # AvgPool1d kernel = stride after the blocks
    final_norm: bool = True
    # Frames the encoder takes (the table has n_ctx = n_frames // 2 rows); None: any length.
    n_frames: Optional[int] = 3000
    # Keep the positional table in float32 and add in float32 (Voxtral's `_keep_in_fp32_modules`).
    fp32_positions: bool = False
    # "chunked": frames per attention window (Qwen2.5-Omni: n_window * 2).
    window_frames: Optional[int] = None
    # Width of the output projection after the final norm (Qwen2.5-Omni's `proj`), None: none.
    d_out: Optional[int] = None
    # "chunked_conv2d" (Qwen3-Omni): channels of the three stride-2 Conv2d layers, and the frames one
    # attention window spans (`n_window_infer`; the chunks of `window_frames` only cut the convolutions).
    conv_channels: Optional[int] = None
    attention_window_frames: Optional[int] = None


@dataclass
class ProjectorConfig:
    """Adapter from encoder frames to LM embeddings."""

    kind: str  # the projector class (`lalm_lens.components.projector_registry.PROJECTORS`)
    d_in: int
    d_out: int
    d_hidden: Optional[int] = None
    stack: int = 1  # frames concatenated per output token (Voxtral: 4)
    extra: dict = field(default_factory=dict)


@dataclass
class LALMConfig:
    """Everything needed to build a `HookedLALM`."""

    family: str
    lm: BlockConfig
    encoder: EncoderConfig
    projector: ProjectorConfig
    audio_token_id: int
    sampling_rate: int = 16000
    # Longest audio the model takes in one clip (None: no limit, e.g. Voxtral chunks).
    max_audio_seconds: Optional[float] = 30.0
    eos_token_ids: tuple = ()
    pad_token_id: Optional[int] = None
    extra: dict = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        for key in ("lm", "encoder"):
            out[key].pop("dtype", None)
        return out


@dataclass
class ConformerConfig(EncoderConfig):
    """Granite Speech's CTC conformer encoder (`kind="conformer"`): blocks of ff1/2, attention, conv, ff2/2.

    Attention runs within blocks of `context_size` frames, with Shaw relative positions
    (a table of `2 * max_pos_emb + 1` rows, distances clamped to ±context_size); the conv
    module widens to `d_conv` (GLU), then a depthwise conv of `conv_kernel` taps; after block
    `n_layers // 2` the CTC head's softmax over `d_ctc` classes is projected back and added.
    """

    context_size: int = 200
    max_pos_emb: int = 512
    conv_kernel: int = 15
    d_conv: int = 2048
    d_ctc: int = 42


@dataclass
class GraniteLMConfig(BlockConfig):
    """Granite's LM: Llama's blocks with four scalars, and an optional LoRA on some projections.

    Inputs are scaled by `embedding_multiplier`, each sub-layer's output by
    `residual_multiplier` before it joins the residual, attention scores by
    `attention_multiplier` (instead of 1/sqrt(d_head)), logits divided by `logits_scaling`.
    `lora`: None, or dict(rank, scale, targets) with targets among "q", "k", "v".
    """

    embedding_multiplier: float = 1.0
    residual_multiplier: float = 1.0
    attention_multiplier: Optional[float] = None
    logits_scaling: float = 1.0
    lora: Optional[dict] = None
