"""One converter module per model family: checkpoint config + keys -> HookedLALM.

Each module defines `MODEL_TYPES` (the `model_type` values of `config.json` it
handles), `convert_config`, `key_map`, `ABSENT`, `input_builder` and
`reference_model`; see `qwen2_audio.py` for the smallest complete example.
"""

from __future__ import annotations

import importlib
from types import ModuleType

FAMILY_MODULES = ("qwen2_audio", "voxtral", "desta", "qwen_audio")


class UnknownFamilyError(ValueError):
    """config.json names a model type no converter handles."""


def family_for(model_type: str | None) -> ModuleType:
    """The converter module for a `config.json` `model_type`."""
    known = {}
    for name in FAMILY_MODULES:
        module = importlib.import_module(f"weight_conversion.{name}")
        for mt in module.MODEL_TYPES:
            known[mt] = module
    if model_type not in known:
        raise UnknownFamilyError(
            f"unknown model family {model_type!r} in config.json; lalm-lens supports: {', '.join(sorted(known))}"
        )
    return known[model_type]
