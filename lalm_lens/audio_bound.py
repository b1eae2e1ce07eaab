"""A model view with the audio bound, so token-only tools can run on an LALM.

`transformer_lens.patching` calls `model.run_with_hooks(tokens, fwd_hooks=...)`
and reads `model.cfg`; this view forwards those calls to the `HookedLALM`
with the audio tensors of one prepared input added.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor

AUDIO_KEYS = ("input_features", "feature_attention_mask", "num_delay_tokens")  # the last: Voxtral Realtime's delay


class AudioBoundModel:
    """`view(tokens)` == `model(input_ids=tokens, <audio of inp>, attention_mask=...)`."""

    def __init__(self, model, inp: Mapping):
        self.model = model
        self.audio = {k: inp[k] for k in AUDIO_KEYS if k in inp}
        self.attention_mask = inp.get("attention_mask")
        self.input_ids = inp["input_ids"]

    def _kwargs(self, tokens: Tensor) -> dict[str, Any]:
        if tokens.shape != self.input_ids.shape:
            raise ValueError(
                f"tokens of shape {tuple(tokens.shape)} do not match the bound input {tuple(self.input_ids.shape)}"
            )
        extra = {} if self.attention_mask is None else {"attention_mask": self.attention_mask}
        return {"input_ids": tokens, **self.audio, **extra}

    def __call__(self, tokens: Tensor, **kwargs: Any):
        return self.model(**self._kwargs(tokens), **kwargs)

    forward = __call__

    def run_with_hooks(self, tokens: Tensor, **kwargs: Any):
        return self.model.run_with_hooks(**self._kwargs(tokens), **kwargs)

    def run_with_cache(self, tokens: Tensor, **kwargs: Any):
        return self.model.run_with_cache(**self._kwargs(tokens), **kwargs)

    def __getattr__(self, name: str):
        return getattr(self.model, name)
