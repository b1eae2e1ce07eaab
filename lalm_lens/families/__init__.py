"""The model families lalm-lens supports, in one explicit registry.

    family_for("qwen2_audio")  # -> the Family value (see families/base.py)

To add a family: a folder here exporting one `Family`, a key-table module in
`weight_conversion/`, one line in `REGISTRY`, and its tests (docs/architecture.md).
"""

from __future__ import annotations

from typing import Optional

from lalm_lens.families.audio_flamingo3 import AUDIO_FLAMINGO3
from lalm_lens.families.base import Family, Option, Reference
from lalm_lens.families.desta import DESTA2, DESTA25
from lalm_lens.families.music_flamingo import MUSIC_FLAMINGO
from lalm_lens.families.granite_speech import GRANITE_SPEECH
from lalm_lens.families.qwen2_5_omni import QWEN2_5_OMNI
from lalm_lens.families.qwen2_audio import QWEN2_AUDIO
from lalm_lens.families.qwen3_omni_moe import QWEN3_OMNI_MOE
from lalm_lens.families.qwen_audio import QWEN_AUDIO
from lalm_lens.families.voxtral import VOXTRAL
from lalm_lens.families.voxtral_realtime import VOXTRAL_REALTIME
from weight_conversion.errors import UnknownFamilyError

REGISTRY: tuple[Family, ...] = (QWEN2_AUDIO, VOXTRAL, DESTA25, DESTA2, QWEN_AUDIO, AUDIO_FLAMINGO3, QWEN2_5_OMNI,
                                QWEN3_OMNI_MOE, VOXTRAL_REALTIME, MUSIC_FLAMINGO, GRANITE_SPEECH)


def family_for(model_type: Optional[str]) -> Family:
    """The family whose checkpoints have this `model_type` in config.json."""
    for family in REGISTRY:
        if model_type in family.model_types:
            return family
    known = sorted(t for f in REGISTRY for t in f.model_types)
    raise UnknownFamilyError(f"unknown model family {model_type!r} in config.json; lalm-lens supports: {', '.join(known)}")


__all__ = ["Family", "Option", "REGISTRY", "Reference", "family_for"]
