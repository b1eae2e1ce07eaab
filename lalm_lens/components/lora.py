"""A LoRA adapter on one projection, kept apart from the base weight (never merged) so it can be hooked or switched.

`delta = scale * (x @ A) @ B` with `A [d_in, rank]`, `B [rank, d_out]` (peft's `lora_A`,
`lora_B` transposed; `scale = lora_alpha / rank`). `active` is set by the model
(`HookedLALM.using_lora`); inactive, the adapter adds nothing and its hooks do not fire.
"""

from typing import Optional

import torch
import torch.nn.functional as F
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint


class LoRA(nn.Module):
    def __init__(self, d_in: int, d_out: int, rank: int, scale: float, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.scale = scale
        self.active = True
        self.A = nn.Parameter(torch.empty(d_in, rank, dtype=dtype))
        self.B = nn.Parameter(torch.empty(rank, d_out, dtype=dtype))
        self.hook_down = HookPoint()  # [batch, pos, rank]
        self.hook_out = HookPoint()  # [batch, pos, d_out]: what the adapter adds to the projection

    def forward(self, x: Float[Tensor, "batch pos d_in"]) -> Optional[Float[Tensor, "batch pos d_out"]]:
        if not self.active:
            return None
        down = self.hook_down(F.linear(x, self.A.T))
        return self.hook_out(F.linear(down, self.B.T) * self.scale)
