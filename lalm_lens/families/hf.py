"""References that are `transformers` classes (Qwen2-Audio, Voxtral, Audio Flamingo 3, Qwen2.5-Omni)."""

from __future__ import annotations

from typing import Mapping, Sequence

from lalm_lens.families.base import Reference


def hf_reference(class_name: str, encoder: str = "model.audio_tower", drop: Sequence[str] = ()) -> Reference:
    """The `transformers` class `class_name` loaded from the checkpoint folder; its encoder blocks at
    `<encoder>.layers`; `drop`: our input keys the original does not take."""

    def load(ckpt, hf_config, dtype, device):
        import transformers

        cls = getattr(transformers, class_name)
        return cls.from_pretrained(ckpt.folder, dtype=dtype).to(device).eval()

    def encoder_layers(original):
        module = original
        for part in encoder.split("."):
            module = getattr(module, part)
        return list(module.layers)

    def forward(original, inp: Mapping):
        return original(**{k: v for k, v in inp.items() if k not in drop}, output_hidden_states=True)

    return Reference(load, encoder_layers, forward)


def processor_prompts(builder):
    """A family's `prompts`: `builder(processor, config)` over the folder's `AutoProcessor`, None without one."""
    from lalm_lens.inputs.hf_processor import load_processor

    def prompts(ckpt, config, hf_config):
        processor = load_processor(ckpt.folder)
        return builder(processor, config) if processor is not None else None

    return prompts
