"""Qwen3-Omni prompts through the checkpoint's own `Qwen3OmniMoeProcessor`, audio + text only.

As for Qwen2.5-Omni (`OmniPrompts`: images and videos refused, a stand-in processor
without torchvision), with Qwen3-Omni's audio layout: the processor pads to the longest
clip and never truncates (no length limit here either), and a clip of n mel frames gives
13 tokens per full 100-frame chunk plus the partial chunk's `conv_length(n % 100)`. Token
k starts at `k // 13` s plus `8 * (k % 13)` frames (the stem's stride) into that second.
Rows are padded to the batch's longest clip (features 0, frame mask 0) before they are
stacked, as the processor pads a batch.
"""

from __future__ import annotations

from typing import Optional

import torch.nn.functional as F

from lalm_lens.components.conv2d_audio_encoder import conv_length
from lalm_lens.families.qwen2_5_omni.prompts import OmniPrompts


class Qwen3OmniPrompts(OmniPrompts):
    def __init__(self, processor, config, n_window: int):
        super().__init__(processor, config)
        self.chunk_frames = 2 * n_window
        self.chunk_tokens = conv_length(self.chunk_frames)
        processor.n_window = n_window  # the processor counts audio tokens with it (its default is 50)

    @property
    def max_seconds(self) -> Optional[float]:
        return None

    def audio_tokens(self, n_samples: int) -> int:
        frames = n_samples // self.hop
        full, rest = divmod(frames, self.chunk_frames)
        return full * self.chunk_tokens + conv_length(rest)

    def token_times(self, n_samples: int) -> list[float]:
        seconds_per_frame = self.hop / self.sampling_rate
        chunk_seconds = self.chunk_frames * seconds_per_frame
        return [(k // self.chunk_tokens) * chunk_seconds + 8 * (k % self.chunk_tokens) * seconds_per_frame
                for k in range(self.audio_tokens(n_samples))]

    def assemble(self, rows, waves):
        width = max((r.features["input_features"].shape[-1] for r in rows if "input_features" in r.features), default=0)
        for row in rows:
            for key in ("input_features", "feature_attention_mask"):
                if key in row.features:
                    row.features[key] = F.pad(row.features[key], (0, width - row.features[key].shape[-1]))
        return super().assemble(rows, waves)
