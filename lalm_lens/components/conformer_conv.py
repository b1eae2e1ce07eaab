"""The conformer's convolution module: pointwise up (GLU), depthwise conv, BatchNorm, SiLU, pointwise down.

`LayerNorm -> x @ W_in + b_in` (2 * d_conv channels) `-> GLU` (first half times the
sigmoid of the second) `->` depthwise conv over time (`W_depthwise [d_conv, kernel]`, no
bias, zero padding `kernel // 2` before and `kernel // 2 - (kernel + 1) % 2` after)
`-> BatchNorm` (running statistics, as in inference) `-> SiLU -> @ W_out + b_out`.
The running statistics are parameters (`bn_mean`, `bn_var`) so the loader fills them.
"""

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from lalm_lens.components.layer_norm import LayerNorm
from lalm_lens.config import ConformerConfig

BATCH_NORM_EPS = 1e-5


class ConformerConv(nn.Module):
    def __init__(self, cfg: ConformerConfig):
        super().__init__()
        d, inner, k, dtype = cfg.d_model, cfg.d_conv, cfg.conv_kernel, cfg.dtype
        self.padding = (k // 2, k // 2 - (k + 1) % 2)
        self.ln = LayerNorm(d, cfg.eps, dtype)
        self.W_in = nn.Parameter(torch.empty(d, 2 * inner, dtype=dtype))
        self.b_in = nn.Parameter(torch.zeros(2 * inner, dtype=dtype))
        self.W_depthwise = nn.Parameter(torch.empty(inner, k, dtype=dtype))
        self.bn_w = nn.Parameter(torch.ones(inner, dtype=dtype))
        self.bn_b = nn.Parameter(torch.zeros(inner, dtype=dtype))
        self.bn_mean = nn.Parameter(torch.zeros(inner, dtype=dtype), requires_grad=False)
        self.bn_var = nn.Parameter(torch.ones(inner, dtype=dtype), requires_grad=False)
        self.W_out = nn.Parameter(torch.empty(inner, d, dtype=dtype))
        self.b_out = nn.Parameter(torch.zeros(d, dtype=dtype))
        self.hook_glu = HookPoint()  # [batch, pos, d_conv]
        self.hook_depthwise = HookPoint()  # [batch, pos, d_conv]
        self.hook_post = HookPoint()  # [batch, pos, d_conv], after BatchNorm and SiLU

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        x = self.hook_glu(F.glu(F.linear(self.ln(x), self.W_in.T, self.b_in), dim=-1))
        x = F.conv1d(F.pad(rearrange(x, "b t c -> b c t"), self.padding), self.W_depthwise[:, None],
                     groups=self.W_depthwise.shape[0])
        x = self.hook_depthwise(rearrange(x, "b c t -> b t c"))
        x = F.batch_norm(rearrange(x, "b t c -> b c t"), self.bn_mean, self.bn_var, self.bn_w, self.bn_b,
                         training=False, eps=BATCH_NORM_EPS)
        x = self.hook_post(F.silu(rearrange(x, "b c t -> b t c")))
        return F.linear(x, self.W_out.T, self.b_out)
