"""The original `AudioFlamingo3ForConditionalGeneration`, fed our prepared inputs.

It reads the frame mask only as `input_features_mask` (a `feature_attention_mask`
keyword would be ignored and the encoder would fail on a missing mask), and it
returns the projected audio vectors as `audio_hidden_states`; `forward` renames
both ways so `verify` compares the mask-aware encoder and the audio vectors too.
Its encoder does not cast `input_features` to the weights' dtype (bfloat16 fails on
float32 features), so `original_inputs` casts them when given the dtype.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Mapping

from lalm_lens.families.base import Reference
from lalm_lens.families.hf import hf_reference

_BASE = hf_reference("AudioFlamingo3ForConditionalGeneration", encoder="model.audio_tower")


def original_inputs(inp: Mapping, dtype=None) -> dict:
    """Our input tensors under the names `AudioFlamingo3ForConditionalGeneration` takes (features in `dtype`)."""
    out = dict(inp.items())
    if "feature_attention_mask" in out:
        out["input_features_mask"] = out.pop("feature_attention_mask")
    if dtype is not None and "input_features" in out:
        out["input_features"] = out["input_features"].to(dtype)
    return out


def forward(original, inp: Mapping):
    out = original(**original_inputs(inp, original.dtype), output_hidden_states=True)
    return SimpleNamespace(logits=out.logits, hidden_states=out.hidden_states,
                           audio_embeds=getattr(out, "audio_hidden_states", None))


REFERENCE = Reference(_BASE.load, _BASE.encoder_layers, forward)
