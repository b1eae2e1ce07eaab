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
