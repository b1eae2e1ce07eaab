"""Audio Flamingo 3 rows through the checkpoint's `AudioFlamingo3Processor` and chat template.

The processor cuts a clip into 30 s windows (at most 20: `max_audio_seconds`
600 cuts longer audio first, with a warning), one row of `input_features` each,
and expands the single `<sound>` of the turn into one token per audio vector
of all the clip's windows together (750 per full window); `audio_tokens` and
`token_times` (0.04 s steps, continuing across windows) are the base class's.
The only difference from `HFProcessorPrompts`: the processor names the frame
mask `input_features_mask`; rows carry it as `feature_attention_mask`, the name
every tool of the house reads (interventions, audio-bound views, engines).
The reference (`reference.py`) hands it back to the original under its own name.
"""

from __future__ import annotations

from lalm_lens.inputs.builder import Row
from lalm_lens.inputs.hf_processor import HFProcessorPrompts

PROCESSOR_MASK, HOUSE_MASK = "input_features_mask", "feature_attention_mask"


class AudioFlamingo3Prompts(HFProcessorPrompts):
    """`HFProcessorPrompts` with the frame mask under the house's name."""

    def build_row(self, wave, prompt, **kwargs) -> Row:
        row = super().build_row(wave, prompt, **kwargs)
        if PROCESSOR_MASK in row.features:
            row.features[HOUSE_MASK] = row.features.pop(PROCESSOR_MASK)
        return row
