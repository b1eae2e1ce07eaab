"""The decoder's time conditioning (Voxtral Realtime): a sinusoid of the transcription delay.

`TimeEmbedding(steps)` computes `[cos(steps * f), sin(steps * f)]` over `d_model / 2`
frequencies `f_i = theta^(-i / (d_model / 2))` once per forward (`hook_time`,
`[1, d_model]`) and leaves it in its `TimeCondition`, which every adaptive norm
of the decoder reads (`adaptive_rms_norm.py`). It is state, not an argument,
because the blocks keep one signature for every family and engine: the value is
the last forward's, which is also what the trace engines' re-runs of that
forward's blocks need.
"""

import math
from typing import Optional

import torch
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint


class TimeCondition:
    """The time embedding of the current forward, shared by the model and its adaptive norms."""

    def __init__(self):
        self.value: Optional[Tensor] = None  # [1, d_model]
        self.steps: Optional[float] = None  # the delay (in tokens) it encodes

    def get(self) -> Tensor:
        if self.value is None:
            raise RuntimeError("the decoder's time conditioning is unset: run a forward of the model first "
                               "(it computes the time embedding from num_delay_tokens)")
        return self.value


class TimeEmbedding(nn.Module):
    """Sinusoidal embedding of a number of steps (no weights); sets `condition` on every call."""

    def __init__(self, d_model: int, theta: float = 10000.0):
        super().__init__()
        self.d_model, self.theta = d_model, theta
        self.condition = TimeCondition()
        self.hook_time = HookPoint()  # [1, d_model]

    def forward(self, steps: float, dtype: torch.dtype, device) -> Tensor:
        half = self.d_model // 2
        inv_freq = torch.exp(-math.log(self.theta) * torch.arange(half, device=device).float() / half)
        emb = torch.full((1,), float(steps), device=device, dtype=dtype) * inv_freq.to(dtype)
        value = self.hook_time(torch.cat((emb.cos(), emb.sin()))[None])
        self.condition.value, self.condition.steps = value, float(steps)
        return value
