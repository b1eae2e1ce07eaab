"""LayerNorm with TransformerLens hooks."""

import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint


class LayerNorm(nn.Module):
    """Centre, scale by the standard deviation, then `w`, `b`; statistics in float32."""

    def __init__(self, d_model: int, eps: float = 1e-5, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.eps = eps
        self.w = nn.Parameter(torch.ones(d_model, dtype=dtype))
        self.b = nn.Parameter(torch.zeros(d_model, dtype=dtype))
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        dtype = x.dtype
        x = x.float()
        x = x - x.mean(-1, keepdim=True)
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        x = self.hook_normalized((x / scale).to(dtype))
        return x * self.w + self.b
