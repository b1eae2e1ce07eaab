"""The audio encoder classes by `EncoderConfig.kind`: a new encoder variant is one entry here."""

from __future__ import annotations

from lalm_lens.components.audio_encoder import AudioEncoder, PaddedAudioEncoder, QwenAudioEncoder
from lalm_lens.components.chunked_audio_encoder import ChunkedAudioEncoder
from lalm_lens.components.conv2d_audio_encoder import Conv2dChunkedAudioEncoder
from lalm_lens.components.streaming_audio_encoder import StreamingAudioEncoder
from lalm_lens.components.conformer_encoder import ConformerEncoder
from lalm_lens.config import EncoderConfig

ENCODERS: dict[str, type[AudioEncoder]] = {
    "whisper": AudioEncoder,  # whole 30 s windows (Voxtral, DeSTA)
    "padded": PaddedAudioEncoder,  # padded frames cropped and masked (Qwen2-Audio, Audio Flamingo 3)
    "qwen_audio": QwenAudioEncoder,  # cropped at the clip's own length (Qwen-Audio v1)
    "chunked": ChunkedAudioEncoder,  # Qwen2.5-Omni: per-chunk convolutions, windowed attention
    "chunked_conv2d": Conv2dChunkedAudioEncoder,  # Qwen3-Omni: Conv2d stem per chunk, 8-chunk attention windows
    "streaming": StreamingAudioEncoder,  # Voxtral Realtime: causal convolutions, sliding-window causal attention
    "conformer": ConformerEncoder,  # Granite Speech: CTC conformer over stacked log-mel frames
}


def build_encoder(cfg: EncoderConfig) -> AudioEncoder:
    if cfg.kind not in ENCODERS:
        raise ValueError(f"unknown encoder kind {cfg.kind!r}; known: {sorted(ENCODERS)}")
    return ENCODERS[cfg.kind](cfg)
