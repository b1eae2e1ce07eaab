"""Music Flamingo (`MusicFlamingoForConditionalGeneration`; `nvidia/music-flamingo-2601-hf`) -> HookedLALM.

Audio Flamingo 3's layout and keys (the same Whisper-style encoder, projector and
Qwen2 LM; `weight_conversion/audio_flamingo3.py`) plus a rotary time embedding
between the encoder and the projector. That embedding has no weights (its
frequencies come from the config: `rope_parameters` with `rope_theta` 1200 and
`partial_rotary_factor` 0.2 of the encoder width, `audio_frame_step` 0.01 s),
so the key table is AF3's. The processor takes up to 1200 s (40 windows of 30 s)
and frames each clip's audio tokens with `<|sound_bos|>` / `<|sound_eos|>`.
"""

from __future__ import annotations

from weight_conversion import audio_flamingo3
from weight_conversion.audio_flamingo3 import ABSENT, key_map  # noqa: F401  (the same keys and absent biases)

MAX_AUDIO_SECONDS = 1200  # MusicFlamingoProcessor(max_audio_len=1200): 40 windows of 30 s, the rest cut
POOL = 4  # mel frames per audio vector: stride-2 conv, then AvgPool 2


def convert_config(hf_config):
    """`MusicFlamingoConfig` -> `LALMConfig`: AF3's, with the rotary-time projector."""
    rope = hf_config.rope_parameters or {}
    if rope.get("rope_type", "default") != "default":
        raise NotImplementedError(f"rotary time rope_type {rope['rope_type']!r} is not supported (only 'default')")
    config = audio_flamingo3.convert_config(hf_config)
    config.family = "music_flamingo"
    config.max_audio_seconds = MAX_AUDIO_SECONDS
    enc = config.encoder
    config.projector.kind = "rotary_time_mlp"
    config.projector.extra = dict(
        audio_token_id=config.audio_token_id,
        rope_theta=float(rope["rope_theta"]),
        rot_fraction=float(rope.get("partial_rotary_factor", 1.0)),
        n_cached=float(hf_config.max_position_embeddings),  # the config sets it to rope_theta
        step=hf_config.audio_frame_step * POOL,
        window_tokens=enc.n_frames // POOL,  # 750 vectors per 30 s window
    )
    return config
