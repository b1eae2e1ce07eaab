"""Adapters from audio-encoder frames to LM input vectors (`audio_projector.*`).

Each takes the encoder output and returns `(embeds [batch, n, d_lm], lengths)`;
the model keeps the first `lengths[i]` vectors of clip i, in order.
"""

import torch
import torch.nn.functional as F
from einops import rearrange
from jaxtyping import Float
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from lalm_lens.components.audio_encoder import EncoderOutput
from lalm_lens.components.rotary_time import RotaryTimeEmbedding, window_index
from lalm_lens.config import ProjectorConfig


class LinearProjector(nn.Module):
    """One linear layer (Qwen2-Audio): `x @ W + b`."""

    def __init__(self, cfg: ProjectorConfig, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.W = nn.Parameter(torch.empty(cfg.d_in, cfg.d_out, dtype=dtype))
        self.b = nn.Parameter(torch.zeros(cfg.d_out, dtype=dtype))
        self.hook_in = HookPoint()  # [batch, pos, d_in]
        self.hook_out = HookPoint()  # [batch, pos, d_out]

    def forward(self, enc: EncoderOutput) -> tuple[Float[Tensor, "batch pos d_out"], Tensor]:
        x = self.hook_in(enc.hidden)
        return self.hook_out(F.linear(x, self.W.T, self.b)), enc.lengths


class MLPProjector(nn.Module):
    """`Linear -> GELU -> Linear` with biases (Audio Flamingo 3); `hook_hidden` after the GELU."""

    def __init__(self, cfg: ProjectorConfig, dtype: torch.dtype = torch.float32):
        super().__init__()
        d_in, d_hidden = cfg.d_in * cfg.stack, cfg.d_hidden or cfg.d_out
        self.W_in = nn.Parameter(torch.empty(d_in, d_hidden, dtype=dtype))
        self.b_in = nn.Parameter(torch.zeros(d_hidden, dtype=dtype))
        self.W_out = nn.Parameter(torch.empty(d_hidden, cfg.d_out, dtype=dtype))
        self.b_out = nn.Parameter(torch.zeros(cfg.d_out, dtype=dtype))
        self.hook_in = HookPoint()  # [clip, frames, d_in]
        self.hook_hidden = HookPoint()  # [clip, tokens, d_hidden], after GELU
        self.hook_out = HookPoint()  # [clip, tokens, d_out]

    def arrange(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        """The vectors the MLP reads, and their valid counts per clip (here the frames themselves)."""
        return x, lengths

    def forward(self, enc: EncoderOutput) -> tuple[Float[Tensor, "batch pos d_out"], Tensor]:
        return self.mlp(*self.arrange(self.hook_in(enc.hidden), enc.lengths))

    def mlp(self, x: Tensor, lengths: Tensor) -> tuple[Float[Tensor, "batch pos d_out"], Tensor]:
        x = self.hook_hidden(F.gelu(F.linear(x, self.W_in.T, self.b_in)))
        return self.hook_out(F.linear(x, self.W_out.T, self.b_out)), lengths


class RotaryTimeProjector(MLPProjector):
    """Music Flamingo: the rotary time embedding (`rotary_time.*`) on the encoder output, then the MLP.
    Which clip each 30 s window belongs to comes from the audio tokens of `input_ids` (`enc.input_ids`)."""

    def __init__(self, cfg: ProjectorConfig, dtype: torch.dtype = torch.float32):
        super().__init__(cfg, dtype)
        e = cfg.extra
        self.audio_token_id = e["audio_token_id"]
        self.rotary_time = RotaryTimeEmbedding(cfg.d_in, e["rope_theta"], e["rot_fraction"], e["n_cached"], e["step"],
                                               e["window_tokens"])

    def forward(self, enc: EncoderOutput) -> tuple[Float[Tensor, "batch pos d_out"], Tensor]:
        if enc.input_ids is None:
            raise ValueError("Music Flamingo places each audio window in time by its clip: pass input_ids "
                             "(model.encode_audio(features, mask, input_ids=...))")
        windows = window_index(enc.input_ids, self.audio_token_id, enc.lengths)
        return self.mlp(self.rotary_time(self.hook_in(enc.hidden), windows), enc.lengths)


class StackProjector(MLPProjector):
    """Voxtral: `stack` consecutive frames concatenated (`hook_stacked`), then the MLP (its biases absent: zero)."""

    def __init__(self, cfg: ProjectorConfig, dtype: torch.dtype = torch.float32):
        super().__init__(cfg, dtype)
        self.stack = cfg.stack
        self.hook_stacked = HookPoint()  # [chunk, frames // stack, stack * d_in]

    def arrange(self, x: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
        if x.shape[1] % self.stack:
            raise ValueError(f"{x.shape[1]} encoder frames are not a multiple of the stack size {self.stack}")
        stacked = rearrange(x, "c (t k) d -> c t (k d)", k=self.stack)
        return self.hook_stacked(stacked), torch.div(lengths, self.stack, rounding_mode="floor")


class TaggedProjector(LinearProjector):
    """Qwen-Audio: `x @ W + b`, then each clip framed by learned begin/end vectors (`W_tags`),
    which land on the `<audio>` / `</audio>` tag positions."""

    def __init__(self, cfg: ProjectorConfig, dtype: torch.dtype = torch.float32):
        super().__init__(cfg, dtype)
        self.W_tags = nn.Parameter(torch.empty(2, cfg.d_out, dtype=dtype))  # [begin, end]
        self.hook_tagged = HookPoint()  # [clip, 1 + pos + 1, d_out]

    def forward(self, enc: EncoderOutput) -> tuple[Float[Tensor, "clip pos d_out"], Tensor]:
        x, lengths = super().forward(enc)
        clips, width, d = x.shape
        out = x.new_zeros(clips, width + 2, d)
        for i, n in enumerate(lengths.tolist()):
            out[i, 0], out[i, 1 : n + 1], out[i, n + 1] = self.W_tags[0], x[i, :n], self.W_tags[1]
        return self.hook_tagged(out), lengths + 2


class IdentityProjector(nn.Module):
    """No adapter: the encoder already ends at the LM width (Qwen2.5-Omni's `proj` is part of its encoder)."""

    def __init__(self, cfg: ProjectorConfig, dtype: torch.dtype = torch.float32):
        super().__init__()
        if cfg.d_in != cfg.d_out:
            raise ValueError(f"an identity projector needs d_in == d_out, got {cfg.d_in} and {cfg.d_out}")
        self.hook_in = HookPoint()  # [batch, pos, d_in]
        self.hook_out = HookPoint()  # [batch, pos, d_out], the same vectors

    def forward(self, enc: EncoderOutput) -> tuple[Float[Tensor, "batch pos d_out"], Tensor]:
        return self.hook_out(self.hook_in(enc.hidden)), enc.lengths
