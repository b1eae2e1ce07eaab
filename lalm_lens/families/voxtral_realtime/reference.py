"""The original for `verify` and the agreement tests: `VoxtralRealtimeForConditionalGeneration`.

Its forward adds one audio vector to every position, so it needs exactly as many
audio steps as tokens; a prepared input carries the whole clip (for decoding),
and the original's `generate` feeds the prefill only the steps of its positions.
The reference does the same: it cuts the features to `frames_per_token` x the
sequence length (exact: the encoder is causal).
"""

from __future__ import annotations

from typing import Mapping

from lalm_lens.families.base import Reference
from lalm_lens.families.hf import hf_reference

FRAMES_PER_TOKEN = 8  # mel frames per 80 ms step (`audio_length_per_tok`)


def cropped(inp: Mapping, frames_per_token: int = FRAMES_PER_TOKEN) -> dict:
    """The input with `input_features` cut to the steps its positions hear, and one `num_delay_tokens`."""
    out = dict(inp.items())
    if out.get("input_features") is not None:
        out["input_features"] = out["input_features"][..., : frames_per_token * out["input_ids"].shape[-1]]
    if out.get("num_delay_tokens") is not None:
        out["num_delay_tokens"] = int(out["num_delay_tokens"])
    return out


def realtime_reference() -> Reference:
    base = hf_reference("VoxtralRealtimeForConditionalGeneration")

    def forward(original, inp: Mapping):
        return original(**cropped(inp), output_hidden_states=True)

    return Reference(base.load, base.encoder_layers, forward)
