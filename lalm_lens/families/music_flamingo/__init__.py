"""Music Flamingo (`nvidia/music-flamingo-2601-hf`): Audio Flamingo 3 plus rotary time on the audio.

Conversion in `weight_conversion/music_flamingo.py` (AF3's key table); the rotary
time embedding is `lalm_lens/components/rotary_time.py`, hooked at
`audio_projector.rotary_time.hook_time|hook_out`; prompts through the checkpoint's
`MusicFlamingoProcessor` (`prompts.py`); checked against `transformers`'
`MusicFlamingoForConditionalGeneration` (`reference.py`).
"""

from __future__ import annotations

from lalm_lens.families.base import Family
from lalm_lens.families.hf import processor_prompts
from lalm_lens.families.music_flamingo.prompts import MusicFlamingoPrompts
from lalm_lens.families.music_flamingo.reference import REFERENCE
from weight_conversion import music_flamingo as conversion

MUSIC_FLAMINGO = Family.from_conversion(
    conversion,
    name="music_flamingo",
    model_types=("musicflamingo",),
    prompts=processor_prompts(MusicFlamingoPrompts),
    reference=REFERENCE,
)
