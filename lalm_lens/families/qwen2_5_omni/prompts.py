"""Qwen2.5-Omni prompts through the checkpoint's own `Qwen2_5OmniProcessor`, audio + text only.

The processor's video processor needs torchvision, which audio and text never
use: when `AutoProcessor` cannot be built, the processor is assembled from the
checkpoint's tokenizer, Whisper feature extractor and chat template, with
stand-ins for the image and video processors that refuse any input.

The longest clip is the feature extractor's window (`n_samples`: 300 s in the
released checkpoint, 30 s for Whisper's default); longer audio is cut there with
a warning, as the processor would cut it silently. Images and videos are refused.
"""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path
from typing import Optional

from lalm_lens.inputs.hf_processor import TOKENIZER_FILES, HFProcessorPrompts

logger = logging.getLogger(__name__)

AUDIO_TEXT_ONLY = ("lalm-lens runs the Omni thinkers (Qwen2.5-Omni, Qwen3-Omni) on audio and text only (the vision "
                   "tower is not converted); pass audio and a text prompt")
VISION_KEYWORDS = ("images", "image", "videos", "video", "pixel_values", "pixel_values_videos")


class _NoVision:
    """Stands in for the image and video processors: never called for audio + text, refuses anything else."""

    model_input_names: list = []
    merge_size = 2
    temporal_patch_size = 2

    def __call__(self, *args, **kwargs):
        raise ValueError(AUDIO_TEXT_ONLY)

    fetch_images = fetch_videos = __call__


@functools.cache
def _audio_text_processor_class(name: str = "Qwen2_5OmniProcessor"):
    import transformers

    class AudioTextOmniProcessor(getattr(transformers, name)):
        """The Omni processor without its type checks of the (stand-in) image and video processors."""

        def check_argument_for_proper_class(self, argument_name, argument):
            return None

    return AudioTextOmniProcessor


def chat_template(folder: Path, tokenizer) -> Optional[str]:
    """The processor's chat template: `chat_template.jinja`, `chat_template.json`, else the tokenizer's."""
    folder = Path(folder)
    if (folder / "chat_template.jinja").is_file():
        return (folder / "chat_template.jinja").read_text()
    if (folder / "chat_template.json").is_file():
        return json.loads((folder / "chat_template.json").read_text())["chat_template"]
    return getattr(tokenizer, "chat_template", None)


def audio_text_processor(folder: Path, processor_class: str = "Qwen2_5OmniProcessor"):
    """An Omni processor (`processor_class`) from the tokenizer, feature extractor and chat template alone."""
    from transformers import AutoTokenizer, WhisperFeatureExtractor

    tokenizer = AutoTokenizer.from_pretrained(folder)
    cls = _audio_text_processor_class(processor_class)
    return cls(image_processor=_NoVision(), video_processor=_NoVision(),
               feature_extractor=WhisperFeatureExtractor.from_pretrained(folder), tokenizer=tokenizer,
               chat_template=chat_template(folder, tokenizer))


def load_omni_processor(folder: Path, processor_class: str = "Qwen2_5OmniProcessor"):
    """The checkpoint's processor (None without tokenizer files); without torchvision, the audio + text one."""
    if not any((Path(folder) / name).is_file() for name in TOKENIZER_FILES):
        return None
    from transformers import AutoProcessor

    try:
        processor = AutoProcessor.from_pretrained(folder)
        if getattr(processor, "feature_extractor", None) is not None and hasattr(processor, "audio_token"):
            return processor
    except Exception as err:  # typically: the video processor needs torchvision
        logger.info("AutoProcessor failed (%s: %s); building the audio + text processor", type(err).__name__, err)
    return audio_text_processor(folder, processor_class)


class OmniPrompts(HFProcessorPrompts):
    """`HFProcessorPrompts` limited to audio + text, cut at the feature extractor's window."""

    @property
    def max_seconds(self) -> float:
        return self.window_samples / self.sampling_rate

    def prepare(self, audio=None, prompt=None, **kwargs):
        vision = sorted(k for k in kwargs if k in VISION_KEYWORDS)
        if vision:
            raise ValueError(f"{AUDIO_TEXT_ONLY} (got {', '.join(vision)})")
        return super().prepare(audio, prompt, **kwargs)

    def build_row(self, wave, prompt: str, **kwargs):
        vision = [t for t in (self.processor.image_token, self.processor.video_token, self.processor.vision_bos_token)
                  if t and t in prompt]
        if vision:
            raise ValueError(f"{AUDIO_TEXT_ONLY} (the prompt holds {', '.join(vision)})")
        return super().build_row(wave, prompt, **kwargs)
