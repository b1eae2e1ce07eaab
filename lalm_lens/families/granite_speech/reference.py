"""The original `GraniteSpeechForConditionalGeneration`, its LoRA adapter applied by peft, fed our prepared inputs.

transformers applies the adapter through its peft integration, which asks for
peft >= 0.22 (not released when this was written; 0.21 is the newest), and its
`from_pretrained` fails on a folder holding `adapter_config.json` when an older
peft is installed. So the base model is loaded with adapter discovery off and the
adapter is injected with peft itself (`inject_adapter_in_model`,
`set_peft_model_state_dict`): the same LoRA layers transformers would create.
The released model turns the adapter on only when audio is present (its
`generate` does so); `forward` here does the same for every call.

Logits: Granite's LM divides them by `logits_scaling` (`GraniteForCausalLM`, which
transformers 4.x used inside Granite Speech, and vLLM). transformers 5 builds Granite Speech
on the headless `GraniteModel` with its own `lm_head` and drops that division; `forward`
restores it (only when the original lacks it), so the reference is the released model's.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from types import SimpleNamespace
from typing import Mapping

from lalm_lens.families.base import Reference

ADAPTER_CONFIG, ADAPTER_WEIGHTS = "adapter_config.json", "adapter_model.safetensors"
PEFT_PREFIX = "base_model.model."


def add_lora(original, lora_config) -> None:
    """Inject peft LoRA layers (enabled) into the original's target projections."""
    from peft import inject_adapter_in_model

    inject_adapter_in_model(lora_config, original)


@contextmanager
def adapter_discovery_off():
    """transformers' `from_pretrained` without its peft adapter lookup (see the module docstring)."""
    from transformers import modeling_utils

    found = modeling_utils.maybe_load_adapters
    modeling_utils.maybe_load_adapters = lambda path, download_kwargs, **kw: (None, path, kw)
    try:
        yield
    finally:
        modeling_utils.maybe_load_adapters = found


def load(ckpt, hf_config, dtype, device):
    from peft import LoraConfig, set_peft_model_state_dict
    from safetensors.torch import load_file
    from transformers import GraniteSpeechForConditionalGeneration

    folder = Path(ckpt.folder)
    with adapter_discovery_off():
        original = GraniteSpeechForConditionalGeneration.from_pretrained(folder, dtype=dtype)
    if (folder / ADAPTER_CONFIG).is_file():
        config = LoraConfig(**{k: v for k, v in json.loads((folder / ADAPTER_CONFIG).read_text()).items()
                               if k in LoraConfig.__dataclass_fields__})
        add_lora(original, config)
        weights = {k.removeprefix(PEFT_PREFIX): v for k, v in load_file(folder / ADAPTER_WEIGHTS).items()}
        result = set_peft_model_state_dict(original, weights)
        if getattr(result, "unexpected_keys", None):
            raise RuntimeError(f"the adapter's keys do not fit the original: {result.unexpected_keys[:4]}")
    return original.to(device=device, dtype=dtype).eval()


def set_adapter(original, active: bool) -> None:
    """Turn the injected LoRA layers on or off (no-op without an adapter)."""
    from peft.tuners.lora import LoraLayer

    for module in original.modules():
        if isinstance(module, LoraLayer):
            module.enable_adapters(active)


def original_inputs(inp: Mapping, dtype=None) -> dict:
    """Our tensors under the original's names (`input_features_mask`), features in `dtype`."""
    out = dict(inp.items())
    if "feature_attention_mask" in out:
        out["input_features_mask"] = out.pop("feature_attention_mask").bool()
    if dtype is not None and "input_features" in out:
        out["input_features"] = out["input_features"].to(dtype)
    return out


def drops_logits_scaling(original) -> bool:
    """True for transformers 5's layout: a headless LM plus `lm_head`, no division by `logits_scaling`."""
    return not hasattr(original.model.language_model, "lm_head")


def forward(original, inp: Mapping):
    set_adapter(original, inp.get("input_features") is not None)
    out = original(**original_inputs(inp, original.dtype), output_hidden_states=True)
    logits = out.logits
    if drops_logits_scaling(original):
        logits = logits / original.config.text_config.logits_scaling
    return SimpleNamespace(logits=logits, hidden_states=out.hidden_states, audio_embeds=audio_vectors(original, inp, out))


def audio_vectors(original, inp: Mapping, out):
    """The projector's vectors as `hook_audio_embeds` holds them: each clip's own, in order, times the LM's
    `embedding_multiplier` (Granite scales its whole input; ours does it in the projector)."""
    vectors = getattr(out, "audio_hidden_states", None)
    if vectors is None:
        return None
    mask = inp.get("feature_attention_mask")
    vectors = vectors[mask.bool()] if mask is not None else vectors.flatten(0, 1)
    return vectors * original.config.text_config.embedding_multiplier


def encoder_layers(original) -> list:
    return list(original.model.encoder.layers)


REFERENCE = Reference(load, encoder_layers, forward)
