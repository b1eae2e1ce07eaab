"""The audio projector classes by `ProjectorConfig.kind`: a new adapter variant is one entry here."""

from __future__ import annotations

import torch
from torch import nn

from lalm_lens.components.projectors import (IdentityProjector, LinearProjector, MLPProjector, RotaryTimeProjector,
                                            StackProjector, TaggedProjector)
from lalm_lens.components.qformer import QFormerProjector
from lalm_lens.components.window_qformer import WindowQFormerProjector
from lalm_lens.config import ProjectorConfig

PROJECTORS: dict[str, type[nn.Module]] = {
    "linear": LinearProjector,  # Qwen2-Audio
    "stack": StackProjector,  # frames stacked, then an MLP (Voxtral, Voxtral Realtime)
    "mlp": MLPProjector,  # Audio Flamingo 3
    "qformer": QFormerProjector,  # DeSTA: Q-Former over chosen encoder layers
    "tagged": TaggedProjector,  # Qwen-Audio v1: audio vectors between tag embeddings
    "identity": IdentityProjector,  # the encoder ends at the LM width (Qwen2.5-Omni, Qwen3-Omni)
    "rotary_time_mlp": RotaryTimeProjector,  # Music Flamingo: rotary time embedding, then the MLP
    "window_qformer": WindowQFormerProjector,  # Granite Speech: a Q-Former over fixed windows
}


def build_projector(cfg: ProjectorConfig, dtype: torch.dtype) -> nn.Module:
    if cfg.kind not in PROJECTORS:
        raise ValueError(f"unknown projector kind {cfg.kind!r}; known: {sorted(PROJECTORS)}")
    return PROJECTORS[cfg.kind](cfg, dtype)
