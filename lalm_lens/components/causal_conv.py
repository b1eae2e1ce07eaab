"""A causal 1-D convolution: padded on the left only, so output frame t reads input frames <= t."""

from jaxtyping import Float
from torch import Tensor, nn
from torch.nn import functional as F


class CausalConv1d(nn.Conv1d):
    """`nn.Conv1d` with `(kernel - 1) * dilation + 1 - stride` zeros prepended and none appended
    (Voxtral Realtime's streaming stem): a frame never sees the future, so audio after it —
    later speech or end padding — cannot change it."""

    @property
    def left_pad(self) -> int:
        return (self.kernel_size[0] - 1) * self.dilation[0] + 1 - self.stride[0]

    def forward(self, x: Float[Tensor, "batch channels frames"]) -> Float[Tensor, "batch out frames_out"]:
        return super().forward(F.pad(x, (self.left_pad, 0)))
