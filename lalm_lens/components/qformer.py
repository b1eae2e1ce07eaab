"""DeSTA's Q-Former connector: learned queries read tapped Whisper layers through a BERT-style encoder.

Per tap t: queries `layer_prompts[t]` (64 x d) pass a shared stack of post-LN
BERT layers — bidirectional self-attention over the queries, cross-attention
to the tapped encoder frames, GELU FFN, each followed by residual + LayerNorm
(eps 1e-12). The tap outputs are mixed per query by `softmax(layer_weights)`,
then `LayerNorm -> Linear` to the LM width. All taps run as one batch
(rows tap-major: `[tap0 clips..., tap1 clips..., ...]`), so every hook fires once.
"""

from __future__ import annotations


import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from lalm_lens.components.attention import Attention, project
from lalm_lens.components.audio_encoder import EncoderOutput
from lalm_lens.components.layer_norm import LayerNorm
from lalm_lens.components.mlp import MLP
from lalm_lens.config import BlockConfig, ProjectorConfig


class CrossAttention(Attention):
    """Queries from `x`, keys and values from `context` (no mask: every frame is visible)."""

    def forward(self, x: Float[Tensor, "batch q d"], context: Float[Tensor, "batch k d"]) -> Float[Tensor, "batch q d"]:
        q = self.hook_q(project(x, self.W_Q, self.b_Q))
        k = self.hook_k(project(context, self.W_K, self.b_K))
        v = self.hook_v(project(context, self.W_V, self.b_V))
        z = self.hook_z(self.attend(q, k, v, None))
        h, d, m = self.W_O.shape
        return F.linear(z.reshape(*z.shape[:2], h * d), self.W_O.reshape(h * d, m).T, self.b_O)


class QFormerLayer(nn.Module):
    """`x = ln1(x + attn(x)); x = ln2(x + cross_attn(x, frames)); x = ln3(x + mlp(x))`."""

    def __init__(self, cfg: BlockConfig, layer: int):
        super().__init__()
        self.attn = Attention(cfg, layer)
        self.ln1 = LayerNorm(cfg.d_model, cfg.eps, cfg.dtype)
        self.cross_attn = CrossAttention(cfg, layer)
        self.ln2 = LayerNorm(cfg.d_model, cfg.eps, cfg.dtype)
        self.mlp = MLP(cfg)
        self.ln3 = LayerNorm(cfg.d_model, cfg.eps, cfg.dtype)
        self.hook_resid_pre = HookPoint()  # [rows, query, d]
        self.hook_attn_out = HookPoint()  # [rows, query, d]
        self.hook_cross_out = HookPoint()  # [rows, query, d]
        self.hook_mlp_out = HookPoint()  # [rows, query, d]
        self.hook_resid_post = HookPoint()  # [rows, query, d]

    def forward(self, x: Tensor, frames: Tensor) -> Tensor:
        x = self.hook_resid_pre(x)
        x = self.ln1(x + self.hook_attn_out(self.attn(x)))
        x = self.ln2(x + self.hook_cross_out(self.cross_attn(x, frames)))
        return self.hook_resid_post(self.ln3(x + self.hook_mlp_out(self.mlp(x))))


def qformer_block_config(cfg: ProjectorConfig, dtype: torch.dtype) -> BlockConfig:
    x = cfg.extra
    return BlockConfig(d_model=cfg.d_in, d_head=cfg.d_in // x["n_heads"], n_heads=x["n_heads"], n_layers=x["n_layers"],
                       n_ctx=x["n_queries"], d_mlp=x["d_mlp"], act_fn="gelu", normalization_type="LN",
                       positional_embedding_type="none", eps=x.get("eps", 1e-12), causal=False, dtype=dtype)


class QFormerProjector(nn.Module):
    """Hooks: `hook_in` (taps stacked `[tap, clip, frame, d]`), `layers.{i}.*`,
    `hook_tap_outputs` `[clip, query, tap, d]`, `hook_tap_weights` `[query, tap]`,
    `hook_mixed` `[clip, query, d]`, `ln.*`, `hook_out` `[clip, query, d_lm]`."""

    def __init__(self, cfg: ProjectorConfig, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.taps = tuple(cfg.extra["taps"])
        n_queries = cfg.extra["n_queries"]
        block = qformer_block_config(cfg, dtype)
        self.layer_prompts = nn.ParameterList(
            nn.Parameter(torch.empty(1, n_queries, cfg.d_in, dtype=dtype)) for _ in self.taps
        )  # one query set per tap, [1, query, d] each (the original's layout)
        self.layer_weights = nn.Parameter(torch.zeros(n_queries, len(self.taps), dtype=dtype))
        self.layers = nn.ModuleList(QFormerLayer(block, i) for i in range(block.n_layers))
        self.ln = LayerNorm(cfg.d_in, 1e-5, dtype)
        self.W = nn.Parameter(torch.empty(cfg.d_in, cfg.d_out, dtype=dtype))
        self.b = nn.Parameter(torch.zeros(cfg.d_out, dtype=dtype))
        self.hook_in = HookPoint()
        self.hook_tap_outputs = HookPoint()
        self.hook_tap_weights = HookPoint()
        self.hook_mixed = HookPoint()
        self.hook_out = HookPoint()

    def forward(self, enc: EncoderOutput) -> tuple[Float[Tensor, "clip query d_out"], Tensor]:
        frames = self.hook_in(torch.stack([enc.layers[t] for t in self.taps]))  # [tap, clip, frame, d]
        n_taps, clips, n_frames, d = frames.shape
        prompts = torch.cat(list(self.layer_prompts))  # [tap, query, d]
        x = prompts[:, None].expand(n_taps, clips, -1, -1).reshape(n_taps * clips, -1, d)
        context = frames.reshape(n_taps * clips, n_frames, d)
        for layer in self.layers:
            x = layer(x, context)
        outputs = self.hook_tap_outputs(x.view(n_taps, clips, -1, d).permute(1, 2, 0, 3))
        weights = self.hook_tap_weights(self.layer_weights.softmax(-1))
        mixed = self.hook_mixed((outputs * weights[..., None]).sum(2))
        out = self.hook_out(F.linear(self.ln(mixed), self.W.T, self.b))
        return out, torch.full((clips,), out.shape[1], device=out.device)
