"""Multi-head attention with TransformerLens hooks and weight layout.

`W_Q [n_heads, d_model, d_head]`, `W_K`/`W_V [n_kv_heads, d_model, d_head]`,
`W_O [n_heads, d_head, d_model]`, biases beside them (zeros where a checkpoint
has none). Q/K/V are stored with strides that make `W.transpose(1, 2)` a
contiguous `[heads * d_head, d_model]` matrix, so each projection is one GEMM
with no weight copy. The pattern is computed explicitly (and hooked) whenever
something is attached to `hook_attn_scores` / `hook_pattern`; otherwise the
same math runs through `scaled_dot_product_attention`.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from lalm_lens.components.past_kv import HeldKeys, PastKV
from lalm_lens.config import BlockConfig


def head_weight(n_heads: int, d_model: int, d_head: int, dtype: torch.dtype) -> nn.Parameter:
    """An `[n_heads, d_model, d_head]` parameter laid out as `[n_heads * d_head, d_model]`."""
    return nn.Parameter(torch.empty(n_heads, d_head, d_model, dtype=dtype).transpose(1, 2))


def project(
    x: Float[Tensor, "batch pos d_model"], W: Float[Tensor, "heads d_model d_head"], b: Float[Tensor, "heads d_head"]
) -> Float[Tensor, "batch pos heads d_head"]:
    """`x @ W + b` per head: `[batch, pos, d_model]` -> `[batch, pos, heads, d_head]`."""
    heads, d_model, d_head = W.shape
    out = F.linear(x, W.transpose(1, 2).reshape(heads * d_head, d_model), b.reshape(-1))
    return out.view(*x.shape[:-1], heads, d_head)


def project_heads(
    x: Float[Tensor, "batch pos heads d_model"], W: Float[Tensor, "heads d_model d_head"], b: Float[Tensor, "heads d_head"]
) -> Float[Tensor, "batch pos heads d_head"]:
    """Each head's own input through its own weights: `[batch, pos, heads, d_model]` -> `[batch, pos, heads, d_head]`."""
    return torch.einsum("bphm,hmd->bphd", x, W) + b


class Attention(nn.Module):
    """Bidirectional or causal multi-head attention; the mask comes from the caller."""

    def __init__(self, cfg: BlockConfig, layer: int = 0):
        super().__init__()
        self.cfg, self.layer = cfg, layer
        h, kv, m, d = cfg.n_heads, self.n_kv_heads, cfg.d_model, cfg.d_head
        self.W_Q = head_weight(h, m, d, cfg.dtype)
        self.W_K = head_weight(kv, m, d, cfg.dtype)
        self.W_V = head_weight(kv, m, d, cfg.dtype)
        self.W_O = nn.Parameter(torch.empty(h, d, m, dtype=cfg.dtype))
        self.b_Q = nn.Parameter(torch.zeros(h, d, dtype=cfg.dtype))
        self.b_K = nn.Parameter(torch.zeros(kv, d, dtype=cfg.dtype))
        self.b_V = nn.Parameter(torch.zeros(kv, d, dtype=cfg.dtype))
        self.b_O = nn.Parameter(torch.zeros(m, dtype=cfg.dtype))
        self.scale = d**-0.5
        self.hook_q = HookPoint()  # [batch, pos, head, d_head]
        self.hook_k = HookPoint()  # [batch, pos, kv_head, d_head]
        self.hook_v = HookPoint()  # [batch, pos, kv_head, d_head]
        self.hook_attn_scores = HookPoint()  # [batch, head, query_pos, key_pos]
        self.hook_pattern = HookPoint()  # [batch, head, query_pos, key_pos]
        self.hook_z = HookPoint()  # [batch, pos, head, d_head]
        self.hook_result = HookPoint()  # [batch, pos, head, d_model], only if cfg.use_attn_result

    @property
    def n_kv_heads(self) -> int:
        """Key/value heads (as many as query heads here; see GroupedQueryAttention)."""
        return self.cfg.n_heads

    def position_query(
        self, q: Float[Tensor, "batch pos head d_head"], rope: Optional[tuple[Tensor, Tensor]]
    ) -> Float[Tensor, "batch pos head d_head"]:
        """Apply positional information to q (none here; see RotaryAttention)."""
        return q

    def position_key(
        self, k: Float[Tensor, "batch pos kv_head d_head"], rope: Optional[tuple[Tensor, Tensor]]
    ) -> Float[Tensor, "batch pos kv_head d_head"]:
        """Apply positional information to k (none here; see RotaryAttention)."""
        return k

    def project_qkv(self, x: Float[Tensor, "batch pos d_model"], which: str) -> Float[Tensor, "batch pos heads d_head"]:
        """The `which` ("Q", "K" or "V") projection `[batch, pos, heads, d_head]` (a variant may add to it)."""
        return project(x, getattr(self, f"W_{which}"), getattr(self, f"b_{which}"))

    def key_value(
        self, x: Float[Tensor, "batch pos d_model"], rope: Optional[tuple[Tensor, Tensor]] = None
    ) -> tuple[Float[Tensor, "batch pos kv_head d_head"], Float[Tensor, "batch pos kv_head d_head"]]:
        """Positioned keys and values `[batch, pos, kv_head, d_head]` of normalised inputs `x`."""
        k = self.hook_k(self.project_qkv(x, "K"))
        v = self.hook_v(self.project_qkv(x, "V"))
        return self.position_key(k, rope), v

    def expand_kv(
        self, k: Float[Tensor, "batch pos kv_head d_head"], v: Float[Tensor, "batch pos kv_head d_head"]
    ) -> tuple[Float[Tensor, "batch pos head d_head"], Float[Tensor, "batch pos head d_head"]]:
        """Match key/value heads to query heads (identity here; see GroupedQueryAttention)."""
        return k, v

    def attend(
        self,
        q: Float[Tensor, "batch pos head d_head"],
        k: Float[Tensor, "batch key_pos kv_head d_head"],
        v: Float[Tensor, "batch key_pos kv_head d_head"],
        mask: Optional[Float[Tensor, "batch_or_1 1 pos keys"]],
        held: Optional[HeldKeys] = None,
    ) -> Float[Tensor, "batch pos head d_head"]:
        """Softmax attention of queries over `held`'s keys (if any), then `k`/`v`: the one attention core
        (scores, mask, softmax and weighted sum are written here only; every `PastKV` ends here).

        The scores and pattern pass through `hook_attn_scores` / `hook_pattern` as one
        `[batch, head, pos, held + key_pos]` tensor. With nothing hooked and nothing held,
        `scaled_dot_product_attention` runs the same math.
        """
        k, v = self.expand_kv(k, v)
        q, k, v = (t.transpose(1, 2) for t in (q, k, v))  # [batch, head, pos, d_head]
        if held is None and not (self.hook_attn_scores.has_hooks() or self.hook_pattern.has_hooks()):
            z = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=self.scale)
            return z.transpose(1, 2)
        scores = q @ k.transpose(-1, -2)
        if held is not None:
            scores = torch.cat([held.scores(q), scores], dim=-1)
        scores = scores * self.scale
        if mask is not None:
            scores = scores + mask
        scores = self.hook_attn_scores(scores)
        pattern = self.hook_pattern(scores.softmax(-1, dtype=torch.float32).to(q.dtype))
        if held is None:
            z = pattern @ v
        else:
            n_held = pattern.shape[-1] - k.shape[-2]
            z = held.weigh(pattern[..., :n_held]) + pattern[..., n_held:] @ v
        return z.transpose(1, 2)

    def forward(
        self,
        x: Float[Tensor, "batch pos d_model"],
        mask: Optional[Tensor] = None,
        rope: Optional[tuple[Tensor, Tensor]] = None,
        kv_cache: Optional[PastKV] = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        """Attention of `x` over itself, after the positions of `kv_cache` if given."""
        q = self.position_query(self.hook_q(self.project_qkv(x, "Q")), rope)
        k, v = self.key_value(x, rope)
        return self.attend_and_write(q, k, v, mask, kv_cache)

    def forward_split(
        self,
        q_in: Float[Tensor, "batch pos head d_model"],
        k_in: Float[Tensor, "batch pos kv_head d_model"],
        v_in: Float[Tensor, "batch pos kv_head d_model"],
        mask: Optional[Tensor] = None,
        rope: Optional[tuple[Tensor, Tensor]] = None,
        kv_cache: Optional[PastKV] = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        """The same attention with a separate (normalised) input per head for q, k and v
        (`cfg.use_split_qkv_input`); k/v inputs are per key/value head."""
        q = self.position_query(self.hook_q(project_heads(q_in, self.W_Q, self.b_Q)), rope)
        k = self.position_key(self.hook_k(project_heads(k_in, self.W_K, self.b_K)), rope)
        v = self.hook_v(project_heads(v_in, self.W_V, self.b_V))
        return self.attend_and_write(q, k, v, mask, kv_cache)

    def attend_and_write(
        self,
        q: Float[Tensor, "batch pos head d_head"],
        k: Float[Tensor, "batch pos kv_head d_head"],
        v: Float[Tensor, "batch pos kv_head d_head"],
        mask: Optional[Tensor],
        kv_cache: Optional[PastKV],
    ) -> Float[Tensor, "batch pos d_model"]:
        """Attention of positioned q/k/v (over `kv_cache`'s positions first), then the output
        projection (per head if `use_attn_result`)."""
        z = self.attend(q, k, v, mask) if kv_cache is None else kv_cache.attend(self, q, k, v, mask)
        z = self.hook_z(z)  # [batch, pos, head, d_head]
        if self.cfg.use_attn_result:
            result = self.hook_result(torch.einsum("bphd,hdm->bphm", z, self.W_O))
            return result.sum(-2) + self.b_O
        h, d, m = self.W_O.shape
        return F.linear(z.reshape(*z.shape[:2], h * d), self.W_O.reshape(h * d, m).T, self.b_O)
