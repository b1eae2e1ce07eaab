"""Feed-forward layers: plain (GELU, Whisper) and gated (SiLU, Llama/Qwen)."""

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from lalm_lens.config import BlockConfig

ACTIVATIONS = {"gelu": F.gelu, "silu": F.silu, "relu": F.relu}


class MLP(nn.Module):
    """`act(x @ W_in + b_in) @ W_out + b_out`."""

    def __init__(self, cfg: BlockConfig):
        super().__init__()
        self.act = ACTIVATIONS[cfg.act_fn]
        self.W_in = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp, dtype=cfg.dtype))
        self.b_in = nn.Parameter(torch.zeros(cfg.d_mlp, dtype=cfg.dtype))
        self.W_out = nn.Parameter(torch.empty(cfg.d_mlp, cfg.d_model, dtype=cfg.dtype))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_model, dtype=cfg.dtype))
        self.hook_pre = HookPoint()  # [batch, pos, d_mlp]
        self.hook_post = HookPoint()  # [batch, pos, d_mlp]

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        pre = self.hook_pre(F.linear(x, self.W_in.T, self.b_in))
        return F.linear(self.hook_post(self.act(pre)), self.W_out.T, self.b_out)


class GatedMLP(MLP):
    """`(act(x @ W_gate) * (x @ W_in)) @ W_out`; `hook_pre` is the gate, `hook_pre_linear` the linear half."""

    def __init__(self, cfg: BlockConfig):
        super().__init__(cfg)
        self.W_gate = nn.Parameter(torch.empty(cfg.d_model, cfg.d_mlp, dtype=cfg.dtype))
        self.b_gate = nn.Parameter(torch.zeros(cfg.d_mlp, dtype=cfg.dtype))
        self.hook_pre_linear = HookPoint()  # [batch, pos, d_mlp]

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        pre = self.hook_pre(F.linear(x, self.W_gate.T, self.b_gate))
        pre_linear = self.hook_pre_linear(F.linear(x, self.W_in.T, self.b_in))
        return F.linear(self.hook_post(self.act(pre) * pre_linear), self.W_out.T, self.b_out)
