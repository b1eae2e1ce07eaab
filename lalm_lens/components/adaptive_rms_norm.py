"""RMSNorm scaled by a time-conditioned factor (Voxtral Realtime's decoder, before the MLP)."""

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from lalm_lens.components.rms_norm import RMSNorm
from lalm_lens.components.time_embedding import TimeCondition


class AdaptiveRMSNorm(RMSNorm):
    """`w * x / rms(x) * (1 + gelu(t @ W_ada_in) @ W_ada_out)`, `t` the forward's time embedding.

    The factor depends on the time conditioning only (one `[1, d_model]` vector per
    forward), so it scales every position alike; it is hooked as `hook_ada_scale`.
    """

    def __init__(self, d_model: int, eps: float, d_ada: int, condition: TimeCondition,
                 dtype: torch.dtype = torch.float32):
        super().__init__(d_model, eps, dtype)
        self.condition = condition
        self.W_ada_in = nn.Parameter(torch.empty(d_model, d_ada, dtype=dtype))
        self.W_ada_out = nn.Parameter(torch.empty(d_ada, d_model, dtype=dtype))
        self.hook_ada_hidden = HookPoint()  # [1, d_ada], after the GELU
        self.hook_ada_scale = HookPoint()  # [1, d_model], the factor (1 + ...)

    def forward(self, x: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_model"]:
        t = self.condition.get().to(x.dtype)
        hidden = self.hook_ada_hidden(F.gelu(t @ self.W_ada_in))
        scale = self.hook_ada_scale(1 + hidden @ self.W_ada_out)
        return super().forward(x) * scale
