"""RMSNorm with TransformerLens hooks."""

import torch
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint


class RMSNorm(nn.Module):
    """Scale by the root mean square (float32), cast back, then multiply by `w`."""

    def __init__(self, d_model: int, eps: float = 1e-6, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.eps = eps
        self.w = nn.Parameter(torch.ones(d_model, dtype=dtype))
        self.hook_scale = HookPoint()  # [batch, pos, 1]
        self.hook_normalized = HookPoint()  # [batch, pos, d_model]

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        dtype = x.dtype
        x = x.float()
        scale = self.hook_scale((x.pow(2).mean(-1, keepdim=True) + self.eps).sqrt())
        return self.w * self.hook_normalized((x / scale).to(dtype))
