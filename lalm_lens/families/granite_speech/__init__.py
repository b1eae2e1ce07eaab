"""Granite Speech (`ibm-granite/granite-speech-3.3-2b`, `-8b`).

Conversion in `weight_conversion/granite_speech.py` (with the LoRA adapter's own key
table); the model class `GraniteSpeechLALM` (`model.py`: Granite's multipliers, the
adapter switch); prompts through the checkpoint's `GraniteSpeechProcessor`
(`prompts.py`); checked against `transformers`' `GraniteSpeechForConditionalGeneration`
with the adapter injected by peft (`reference.py`).
"""

from __future__ import annotations

from pathlib import Path

from lalm_lens.families.base import Family
from lalm_lens.families.granite_speech.model import GraniteSpeechLALM
from lalm_lens.families.granite_speech.prompts import GraniteSpeechPrompts
from lalm_lens.families.granite_speech.reference import REFERENCE
from lalm_lens.families.hf import processor_prompts
from weight_conversion import granite_speech as conversion
from weight_conversion.base import WeightSource


def read_config(ckpt, **options):
    from transformers import AutoConfig

    return conversion.read_source(ckpt.folder, AutoConfig.from_pretrained(ckpt.folder))


def weight_sources(ckpt, config, source) -> list[WeightSource]:
    """The model's shards, then (when the config names one) the adapter's file."""
    sources = [WeightSource(ckpt.shards(), conversion.key_map(config), f"checkpoint {ckpt.name}")]
    if config.lm.lora:
        ckpt.fetch([conversion.ADAPTER_WEIGHTS])
        path = Path(ckpt.folder) / conversion.ADAPTER_WEIGHTS
        if not path.is_file():
            raise FileNotFoundError(f"{ckpt.folder} has {conversion.ADAPTER_CONFIG} but no {conversion.ADAPTER_WEIGHTS}")
        sources.append(WeightSource((path,), conversion.adapter_key_map(config), f"LoRA adapter of {ckpt.name}"))
    return sources


GRANITE_SPEECH = Family.from_conversion(
    conversion,
    name="granite_speech",
    model_types=("granite_speech",),
    prompts=processor_prompts(GraniteSpeechPrompts),
    reference=REFERENCE,
    read_config=read_config,
    weight_sources=weight_sources,
    model_class=GraniteSpeechLALM,
)
