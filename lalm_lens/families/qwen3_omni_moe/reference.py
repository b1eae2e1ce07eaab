"""The original: `transformers`' `Qwen3OmniMoeThinkerForConditionalGeneration`, seen as `verify` compares it.

As for Qwen2.5-Omni (`qwen2_5_omni/reference.py`): the audio encoder runs on all clips'
frames concatenated, so `encoder_layers` gives views whose hooks see `[clips, pos, d]`,
split at each clip's output length (13 per 100-frame chunk plus the partial chunk's).
"""

from __future__ import annotations

from lalm_lens.families.base import Reference
from lalm_lens.families.hf import hf_reference
from lalm_lens.families.qwen2_5_omni.reference import ClipBatchedLayer, forward

_HF = hf_reference("Qwen3OmniMoeThinkerForConditionalGeneration")


def encoder_layers(original) -> list:
    from transformers.models.qwen3_omni_moe.modeling_qwen3_omni_moe import _get_feat_extract_output_lengths

    tower = original.model.audio_tower
    lengths = lambda frames: _get_feat_extract_output_lengths(frames, tower.n_window)  # noqa: E731
    return [ClipBatchedLayer(tower, layer, lengths) for layer in tower.layers]


REFERENCE = Reference(_HF.load, encoder_layers, forward)
