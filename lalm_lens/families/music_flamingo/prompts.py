"""Music Flamingo rows through the checkpoint's `MusicFlamingoProcessor` and chat template.

The same windows as Audio Flamingo 3 (30 s each, 750 audio tokens per full
window, 0.04 s apart and continuing across windows), up to 1200 s (40 windows);
the processor frames each clip's audio tokens with `<|sound_bos|>` and
`<|sound_eos|>`, ordinary text tokens that fall in the 'template' group.
"""

from __future__ import annotations

from lalm_lens.families.audio_flamingo3.prompts import AudioFlamingo3Prompts


class MusicFlamingoPrompts(AudioFlamingo3Prompts):
    """`AudioFlamingo3Prompts` whose expanded audio placeholder carries the processor's begin/end tags."""

    def expand_audio(self, n_audio: int) -> str:
        return self.processor.audio_bos_token + super().expand_audio(n_audio) + self.processor.audio_eos_token
