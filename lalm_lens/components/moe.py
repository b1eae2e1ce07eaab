"""Mixture-of-experts feed-forward layer (Qwen3-MoE / Qwen3-Omni thinker), hooked.

A router scores every expert, `logits = x @ W_router` (`[d_model, n_experts]`); the
probabilities are the softmax of the logits in float32 over **all** experts, the
top `k = experts_per_token` of them are kept, renormalised to sum to 1 when
`norm_topk_prob`, and cast back to the model's dtype. Each chosen expert is a
gated MLP without biases, `(silu(x @ W_gate) * (x @ W_in)) @ W_out`; the layer's
output is the routing-weighted sum of the chosen experts' outputs. There is no
shared expert and no auxiliary-free bias in the thinker (its config has
`shared_expert_intermediate_size: 0`), so none is built.

Hooks (`blocks.{l}.mlp.` + name):
- `hook_router_logits` `[batch, pos, n_experts]`: the router's raw scores;
- `hook_topk_ids` `[batch, pos, k]` (int64): the chosen experts, best first;
- `hook_topk_weights` `[batch, pos, k]`: their routing weights (after renormalisation);
  editing ids or weights re-routes the token (e.g. to patch a token's routing);
- `hook_expert_weights` `[batch, pos, n_experts]`: the same routing as one weight per
  expert (0 where it was not chosen; a repeated id's weights add up). The layer computes
  expert e wherever this weight is nonzero, so setting entry e re-weights, adds or drops
  expert e at that token (the `expert_weights` state of `causal_trace`);
- `hook_expert_out` `[batch, pos, n_experts, d_model]`: each expert's weighted output,
  0 where it was not computed, summed over experts after the hook (so writing entry e
  replaces exactly expert e's contribution: the `expert_out` state). Computed only when
  `cfg.use_expert_outputs` (`HookedLALM.set_use_expert_outputs(True)`): it holds n_experts
  copies of the stream (Qwen3-Omni, bf16: 128 × 2048 × 2 B = 512 KiB per token per layer);
- `experts.{e}.hook_pre|hook_pre_linear|hook_post` `[n_routed, d_expert]`: inside expert
  e, over the tokens routed to it in this call (flattened batch × pos, in order).
The block's `hook_mlp_out` is the summed output, as for a dense MLP.
"""

from __future__ import annotations

import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from lalm_lens.components.mlp import ACTIVATIONS
from lalm_lens.config import BlockConfig


class Expert(nn.Module):
    """One gated expert, no biases: `(act(x @ W_gate) * (x @ W_in)) @ W_out`."""

    def __init__(self, cfg: BlockConfig):
        super().__init__()
        self.act = ACTIVATIONS[cfg.act_fn]
        self.W_gate = nn.Parameter(torch.empty(cfg.d_model, cfg.d_expert, dtype=cfg.dtype))
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, cfg.d_expert, dtype=cfg.dtype))
        self.W_out = nn.Parameter(torch.empty(cfg.d_expert, cfg.d_model, dtype=cfg.dtype))
        self.hook_pre = HookPoint()  # [n_routed, d_expert]
        self.hook_pre_linear = HookPoint()  # [n_routed, d_expert]
        self.hook_post = HookPoint()  # [n_routed, d_expert]

    def forward(self, x: Float[Tensor, "n d_model"]) -> Float[Tensor, "n d_model"]:
        pre = self.hook_pre(x @ self.W_gate)
        pre_linear = self.hook_pre_linear(x @ self.W_in)
        return self.hook_post(self.act(pre) * pre_linear) @ self.W_out


class MoEMLP(nn.Module):
    """Router + `n_experts` gated experts; `experts_per_token` experts per token."""

    def __init__(self, cfg: BlockConfig):
        super().__init__()
        if not cfg.n_experts or not cfg.d_expert or not 1 <= cfg.experts_per_token <= cfg.n_experts:
            raise ValueError(f"a MoE layer needs n_experts, d_expert and 1 <= experts_per_token <= n_experts, got "
                             f"{cfg.n_experts}, {cfg.d_expert}, {cfg.experts_per_token}")
        self.cfg = cfg
        self.W_router = nn.Parameter(torch.empty(cfg.d_model, cfg.n_experts, dtype=cfg.dtype))
        self.experts = nn.ModuleList(Expert(cfg) for _ in range(cfg.n_experts))
        self.hook_router_logits = HookPoint()  # [batch, pos, n_experts]
        self.hook_topk_ids = HookPoint()  # [batch, pos, k]
        self.hook_topk_weights = HookPoint()  # [batch, pos, k]
        self.hook_expert_weights = HookPoint()  # [batch, pos, n_experts]
        self.hook_expert_out = HookPoint()  # [batch, pos, n_experts, d_model], only if cfg.use_expert_outputs

    def route(self, x: Float[Tensor, "batch pos d_model"]) -> tuple[Tensor, Tensor]:
        """Top-k expert ids `[batch, pos, k]` and their weights (softmax over all experts, then top-k)."""
        logits = self.hook_router_logits(x @ self.W_router)
        probs = logits.softmax(-1, dtype=torch.float32)
        weights, ids = probs.topk(self.cfg.experts_per_token, dim=-1)
        if self.cfg.norm_topk_prob:
            weights = weights / weights.sum(-1, keepdim=True)
        return self.hook_topk_ids(ids), self.hook_topk_weights(weights.to(logits.dtype))

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        ids, weights = self.route(x)
        dense = weights.new_zeros(*ids.shape[:-1], self.cfg.n_experts).scatter_add_(-1, ids, weights)
        dense = self.hook_expert_weights(dense).reshape(-1, self.cfg.n_experts)
        flat = x.reshape(-1, x.shape[-1])
        per_expert = self.cfg.use_expert_outputs
        out = flat.new_zeros(flat.shape[0], self.cfg.n_experts, flat.shape[1]) if per_expert else torch.zeros_like(flat)
        for e in (dense != 0).any(0).nonzero()[:, 0].tolist():  # only the experts some token weighs
            token = (dense[:, e] != 0).nonzero()[:, 0]
            y = self.experts[e](flat[token]) * dense[token, e, None]
            if per_expert:
                out[token, e] = y.to(out.dtype)
            else:
                out.index_add_(0, token, y.to(out.dtype))
        if per_expert:
            out = self.hook_expert_out(out.view(*x.shape[:-1], *out.shape[1:])).sum(-2)
        return out.view(x.shape)
