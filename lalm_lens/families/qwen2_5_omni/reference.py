"""The original: `transformers`' `Qwen2_5OmniThinkerForConditionalGeneration`, seen as `verify` compares it.

Its audio encoder runs on all clips' frames concatenated (`[frames, d]`, no batch
axis) and its layers return `(hidden,)`; `encoder_layers` gives views whose
forward hooks see `[clips, pos, d]` (each clip's frames, zero-padded), our layout.
`forward` also returns the audio features it wrote into the placeholders.
"""

from __future__ import annotations

from types import SimpleNamespace
from typing import Mapping

from torch.nn.utils.rnn import pad_sequence

from lalm_lens.families.base import Reference
from lalm_lens.families.hf import hf_reference

_HF = hf_reference("Qwen2_5OmniThinkerForConditionalGeneration")


class _Handles:
    def __init__(self, *handles):
        self.handles = handles

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


class ClipBatchedLayer:
    """One encoder layer of the original; `register_forward_hook(fn)` calls `fn(module, args, (hidden,))`
    with `hidden` `[clips, pos, d]`, split at the clip lengths the tower was called with."""

    def __init__(self, tower, layer, conv_lengths=lambda frames: (frames - 1) // 2 + 1):
        self.tower, self.layer, self.conv_lengths = tower, layer, conv_lengths

    def register_forward_hook(self, fn):
        lengths = {}

        def clip_lengths(module, args, kwargs):
            frames = kwargs.get("feature_lens", args[1] if len(args) > 1 else None)
            lengths["conv"] = self.conv_lengths(frames).tolist()

        def batched(module, args, out):
            flat = out[0] if isinstance(out, tuple) else out
            fn(module, args, (pad_sequence(flat.split(lengths["conv"]), batch_first=True),))  # never replaces `out`

        return _Handles(self.tower.register_forward_pre_hook(clip_lengths, with_kwargs=True),
                        self.layer.register_forward_hook(batched))


def encoder_layers(original) -> list:
    tower = original.model.audio_tower
    return [ClipBatchedLayer(tower, layer) for layer in tower.layers]


def forward(original, inp: Mapping):
    """Logits, the LM's hidden states and the audio features (`[n_audio_tokens, d_model]`, None without audio)."""
    captured = {}
    handle = original.model.audio_tower.register_forward_hook(
        lambda module, args, out: captured.__setitem__("audio", out.last_hidden_state))
    try:
        out = original(**dict(inp.items()), output_hidden_states=True)
    finally:
        handle.remove()
    return SimpleNamespace(logits=out.logits, hidden_states=out.hidden_states, audio_embeds=captured.get("audio"))


REFERENCE = Reference(_HF.load, encoder_layers, forward)
