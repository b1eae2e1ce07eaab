"""Qwen-Audio and Qwen-Audio-Chat v1 (`Qwen/Qwen-Audio`, `Qwen/Qwen-Audio-Chat`), natively.

The remote code does not load on transformers 5; conversion in
`weight_conversion/qwen_audio.py`, the tokenizer read with `tiktoken`
(`tokenizer.py`), prompts in `prompts.py`, and the reference assembled from
`transformers` parts (`reference.py`).
"""

from __future__ import annotations

from lalm_lens.families.base import Family, Reference
from lalm_lens.families.qwen_audio.prompts import QwenAudioPrompts
from weight_conversion import qwen_audio as conversion


def load_reference(ckpt, hf_config, dtype, device):
    from lalm_lens.families.qwen_audio.reference import load_reference as build

    return build(ckpt, dtype=dtype, device=device)


QWEN_AUDIO = Family.from_conversion(
    conversion,
    name="qwen_audio",
    model_types=("qwen",),
    prompts=lambda ckpt, config, hf_config: QwenAudioPrompts.from_folder(ckpt.folder, config),
    reference=Reference(load_reference, lambda ref: list(ref.encoder.layers), lambda ref, inp: ref(**inp)),
    read_config=lambda ckpt: conversion.config_from_dict(ckpt.config(), str(ckpt.folder / "config.json")),
)
