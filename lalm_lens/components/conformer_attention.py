"""The conformer's self-attention: within blocks of `context_size` frames, with Shaw relative positions.

The sequence (after the pre-norm) is zero-padded to whole blocks; each block attends
only to itself. Scores are `(q·k + q·R[dist(i, j)]) * d_head^-0.5`, where `R` is a learned
table (`W_rel [2 * max_pos_emb + 1, d_head]`) indexed by `clamp(i - j, ±context_size) +
max_pos_emb`; in the last block the padded frames are masked (as keys, and as queries,
whose outputs are dropped). q/k/v have no bias, the output projection has one.
"""

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from lalm_lens.components.attention import head_weight, project
from lalm_lens.components.layer_norm import LayerNorm
from lalm_lens.config import ConformerConfig


def relative_distances(context_size: int, max_pos_emb: int, device=None) -> Int[Tensor, "query key"]:
    """Row of the relative-position table for each (query, key) pair of a block."""
    seq = torch.arange(context_size, device=device)
    return (seq[:, None] - seq[None, :]).clamp(-context_size, context_size) + max_pos_emb


class ConformerAttention(nn.Module):
    def __init__(self, cfg: ConformerConfig):
        super().__init__()
        if not 0 < cfg.context_size <= cfg.max_pos_emb:
            raise ValueError(f"context_size {cfg.context_size} must be in 1..max_pos_emb ({cfg.max_pos_emb})")
        self.cfg = cfg
        h, m, d = cfg.n_heads, cfg.d_model, cfg.d_head
        self.ln = LayerNorm(m, cfg.eps, cfg.dtype)
        self.W_Q, self.W_K, self.W_V = (head_weight(h, m, d, cfg.dtype) for _ in range(3))
        self.W_O = nn.Parameter(torch.empty(h, d, m, dtype=cfg.dtype))
        self.b_O = nn.Parameter(torch.zeros(m, dtype=cfg.dtype))
        self.W_rel = nn.Parameter(torch.empty(2 * cfg.max_pos_emb + 1, d, dtype=cfg.dtype))
        self.scale = d**-0.5
        self.hook_q = HookPoint()  # [batch, pos, head, d_head]
        self.hook_k = HookPoint()  # [batch, pos, head, d_head]
        self.hook_v = HookPoint()  # [batch, pos, head, d_head]
        self.hook_pos_scores = HookPoint()  # [batch, block, head, query, key]: q·R[dist] * scale
        self.hook_attn_scores = HookPoint()  # [batch, block, head, query, key]
        self.hook_pattern = HookPoint()  # [batch, block, head, query, key]
        self.hook_z = HookPoint()  # [batch, pos, head, d_head]

    def distances(self, device) -> Tensor:
        return relative_distances(self.cfg.context_size, self.cfg.max_pos_emb, device)

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        x = self.ln(x)
        n, c = x.shape[1], self.cfg.context_size
        n_blocks, rest = math.ceil(n / c), n % c
        x = F.pad(x, (0, 0, 0, n_blocks * c - n))
        no_bias = x.new_zeros(self.W_Q.shape[0], self.W_Q.shape[2])
        q, k, v = (hook(project(x, W, no_bias)) for hook, W in
                   ((self.hook_q, self.W_Q), (self.hook_k, self.W_K), (self.hook_v, self.W_V)))
        q, k, v = (rearrange(t, "b (m c) h d -> b m h c d", c=c) for t in (q, k, v))
        rel = self.W_rel[self.distances(x.device)]  # [query, key, d_head]
        pos = self.hook_pos_scores(torch.einsum("bmhcd,crd->bmhcr", q, rel) * self.scale)
        if rest:
            pad = torch.ones(c, c, dtype=torch.bool, device=x.device)
            pad[:rest, :rest] = False
            pos[:, -1].masked_fill_(pad, -torch.finfo(pos.dtype).max)
        scores = self.hook_attn_scores(q @ k.transpose(-1, -2) * self.scale + pos)
        pattern = self.hook_pattern(scores.softmax(-1, dtype=torch.float32).to(q.dtype))
        z = self.hook_z(rearrange(pattern @ v, "b m h c d -> b (m c) h d")[:, :n])
        h, d, m = self.W_O.shape
        return F.linear(z.reshape(*z.shape[:2], h * d), self.W_O.reshape(h * d, m).T, self.b_O)
