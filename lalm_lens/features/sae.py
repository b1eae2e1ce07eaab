"""A sparse autoencoder (or transcoder) with SAELens's hook points.

`SAE` is one value for the formats researchers share (SAELens, EleutherAI
sparsify): ReLU, JumpReLU and TopK activations, optional `b_dec` centring of
the input, and a transcoder form that reads one hook and writes another
(`hook_name_out`). Its HookPoints carry SAELens's names, so once spliced into
a model (`model.add_sae`) `run_with_cache` sees `...hook_sae_acts_post`.

    hidden_pre = (x - b_dec·[apply_b_dec_to_input]) @ W_enc + b_enc
    relu:     acts = relu(hidden_pre)
    jumprelu: acts = relu(hidden_pre) · [hidden_pre > threshold]
    topk:     acts = relu of the k largest hidden_pre, zero elsewhere
    recons = acts @ W_dec + b_dec   (+ x @ W_skip.T for a sparsify skip transcoder)
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

ACTIVATIONS = ("relu", "jumprelu", "topk")


@dataclass(frozen=True)
class SAEConfig:
    """Shape, activation and where the SAE reads (and, for a transcoder, writes)."""

    d_in: int
    d_sae: int
    activation: str = "relu"
    k: Optional[int] = None  # TopK only
    apply_b_dec_to_input: bool = True
    hook_name: Optional[str] = None
    hook_name_out: Optional[str] = None  # a transcoder's output hook
    d_out: Optional[int] = None  # a transcoder's output width (default d_in)
    skip_connection: bool = False  # sparsify's W_skip [d_out, d_in]

    def __post_init__(self):
        if self.activation not in ACTIVATIONS:
            raise ValueError(f"activation={self.activation!r} is not one of {ACTIVATIONS}")
        if self.activation == "topk" and not (isinstance(self.k, int) and 0 < self.k <= self.d_sae):
            raise ValueError(f"activation='topk' needs k, an int in 1..d_sae={self.d_sae} (got k={self.k!r})")

    @property
    def out_dim(self) -> int:
        return self.d_out or self.d_in

    @property
    def is_transcoder(self) -> bool:
        return self.hook_name_out is not None and self.hook_name_out != self.hook_name


class SAE(nn.Module):
    """Encode to sparse features, decode back; every step hookable under SAELens's names."""

    def __init__(self, cfg: SAEConfig, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.cfg = cfg
        self.W_enc = nn.Parameter(torch.zeros(cfg.d_in, cfg.d_sae, dtype=dtype))
        self.b_enc = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dtype))
        self.W_dec = nn.Parameter(torch.zeros(cfg.d_sae, cfg.out_dim, dtype=dtype))
        self.b_dec = nn.Parameter(torch.zeros(cfg.out_dim, dtype=dtype))
        self.threshold = nn.Parameter(torch.zeros(cfg.d_sae, dtype=dtype)) if cfg.activation == "jumprelu" else None
        self.W_skip = nn.Parameter(torch.zeros(cfg.out_dim, cfg.d_in, dtype=dtype)) if cfg.skip_connection else None
        self.use_error_term = True
        self.hook_sae_input = HookPoint()  # [..., d_in]
        self.hook_sae_acts_pre = HookPoint()  # [..., d_sae]
        self.hook_sae_acts_post = HookPoint()  # [..., d_sae]
        self.hook_sae_recons = HookPoint()  # [..., d_out]
        self.hook_sae_error = HookPoint()  # [..., d_out]
        self.hook_sae_output = HookPoint()  # [..., d_out]

    @classmethod
    def random(cls, cfg: SAEConfig, seed: int = 0, std: float = 0.3) -> "SAE":
        """Random weights (tests, toy runs); thresholds small and positive."""
        gen = torch.Generator().manual_seed(seed)
        sae = cls(cfg)
        with torch.no_grad():
            for p in sae.parameters():
                p.copy_(torch.randn(p.shape, generator=gen) * std)
            if sae.threshold is not None:
                sae.threshold.copy_(torch.rand(cfg.d_sae, generator=gen) * std)
        return sae

    # ------------------------------------------------------------------ pieces
    def activation(self, hidden_pre: Float[Tensor, "... d_sae"]) -> Float[Tensor, "... d_sae"]:
        kind = self.cfg.activation
        if kind == "relu":
            return torch.relu(hidden_pre)
        if kind == "jumprelu":
            return torch.relu(hidden_pre) * (hidden_pre > self.threshold).to(hidden_pre.dtype)
        top = hidden_pre.topk(self.cfg.k, dim=-1)
        return torch.zeros_like(hidden_pre).scatter(-1, top.indices, torch.relu(top.values))

    def hidden_pre(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        x = x.to(self.W_enc.dtype)
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        return x @ self.W_enc + self.b_enc

    def _decode(self, acts: Tensor, x: Optional[Tensor]) -> Tensor:
        out = acts @ self.W_dec + self.b_dec
        if self.W_skip is not None:
            if x is None:
                raise ValueError("decode: this SAE has a skip connection (W_skip); pass x, the SAE's input")
            out = out + x.to(self.W_skip.dtype) @ self.W_skip.T
        return out

    def encode(self, x: Float[Tensor, "... d_in"]) -> Float[Tensor, "... d_sae"]:
        """Feature activations (through `hook_sae_acts_pre` / `hook_sae_acts_post`)."""
        return self.hook_sae_acts_post(self.activation(self.hook_sae_acts_pre(self.hidden_pre(x))))

    def decode(self, acts: Float[Tensor, "... d_sae"], x: Optional[Tensor] = None) -> Float[Tensor, "... d_out"]:
        """Reconstruction (through `hook_sae_recons`); `x` feeds a skip connection."""
        return self.hook_sae_recons(self._decode(acts, x))

    def forward(self, x: Float[Tensor, "... d_in"], target: Optional[Tensor] = None) -> Tensor:
        """The reconstruction; with `use_error_term`, plus the error `target − clean recons`.

        `target` is what the output stands in for (an autoencoder's input, a
        transcoder's true output). As in SAELens, the error is taken from a
        reconstruction without hooks, so with the error term the output equals
        `target` exactly unless a hook edits the features, and then
        it moves by exactly the edit's decoded change.
        """
        x = self.hook_sae_input(x)
        recons = self.decode(self.encode(x), x)
        if not self.use_error_term:
            return self.hook_sae_output(recons.to(x.dtype))
        target = x if target is None else target
        clean = self._decode(self.activation(self.hidden_pre(x)), x)
        raw_error = target.to(clean.dtype) - clean
        error = self.hook_sae_error(raw_error)
        # = recons + error, written so that it is `target` bit for bit when no hook edits anything
        out = target.to(clean.dtype) + (recons - clean) + (error - raw_error)
        return self.hook_sae_output(out.to(target.dtype))
