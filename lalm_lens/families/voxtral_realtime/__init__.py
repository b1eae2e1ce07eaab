"""Voxtral Realtime (`mistralai/Voxtral-Mini-4B-Realtime-2602`): streaming encoder, audio and text on one time axis.

Conversion in `weight_conversion/voxtral_realtime.py`; the model class
(`HookedRealtimeLALM`, time-aligned audio and time-conditioned norms) in
`model.py`; prompts through the `VoxtralRealtimeProcessor` (`prompts.py`);
checked against `transformers`' `VoxtralRealtimeForConditionalGeneration`.
"""

from __future__ import annotations

from lalm_lens.families.base import Family
from lalm_lens.families.hf import processor_prompts
from lalm_lens.families.voxtral_realtime.model import HookedRealtimeLALM
from lalm_lens.families.voxtral_realtime.prompts import RealtimePrompts
from lalm_lens.families.voxtral_realtime.reference import realtime_reference
from weight_conversion import voxtral_realtime as conversion

VOXTRAL_REALTIME = Family.from_conversion(
    conversion,
    name="voxtral_realtime",
    model_types=("voxtral_realtime",),
    prompts=processor_prompts(RealtimePrompts),
    reference=realtime_reference(),
    model_class=HookedRealtimeLALM,
)
