"""Checkpoint conversion, one module per model family: config builder + declarative key table.

A family's module maps the checkpoint's `config.json` to an `LALMConfig`
(`convert_config`) and its keys to our parameters (`key_map`, `ABSENT`); it
imports nothing from `lalm_lens` but `lalm_lens.config`. The family itself
(prompts, reference, loading) is a `lalm_lens.families.Family` value.
"""

from weight_conversion.errors import CheckpointError, UnknownFamilyError

__all__ = ["CheckpointError", "UnknownFamilyError"]
