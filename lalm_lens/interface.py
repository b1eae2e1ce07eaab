"""`LALM`: what the analyses need of a hooked audio LM, as a `Protocol`.

Tracing, circuits and features take a `model: LALM`. `HookedLALM` (and every
family's subclass) satisfies it; naming the protocol rather than the class keeps
the analyses below the model in the import graph (the model imports the
feature splice and generation, which use the analyses) and says which part of
the model an analysis relies on: the forward as named pieces, the hook points,
the tokenizer and the input builder.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any, Mapping, Optional, Protocol, runtime_checkable

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens.hook_points import HookPoint

from lalm_lens.config import BlockConfig, LALMConfig


@runtime_checkable
class LALM(Protocol):
    """A hooked audio LM: `HookedRootModule` hooks plus the forward as the pieces the engines re-run."""

    cfg: BlockConfig  # the LM's config (TransformerLens's fields)
    config: LALMConfig  # encoder + projector + LM
    name_or_path: Optional[str]  # what it was loaded from (None: built from a config)
    tokenizer: Any
    hook_dict: dict[str, HookPoint]
    blocks: nn.ModuleList
    context_level: int

    @property
    def device(self) -> torch.device: ...

    def __call__(self, *args: Any, **kwargs: Any) -> Any: ...

    def hooks(self, fwd_hooks: Any = ..., bwd_hooks: Any = ..., reset_hooks_end: bool = True,
              clear_contexts: bool = False) -> AbstractContextManager: ...

    def run_with_hooks(self, *args: Any, fwd_hooks: Any = ..., **kwargs: Any) -> Any: ...

    def run_with_cache(self, *args: Any, **kwargs: Any) -> Any: ...

    def model_inputs(self, input: Any, kwargs: Optional[dict] = None) -> dict[str, Tensor]: ...

    def embed_inputs(self, *args: Any, **kwargs: Any) -> Any: ...

    def lm_context(self, *args: Any, **kwargs: Any) -> Any: ...

    def run_blocks(self, *args: Any, **kwargs: Any) -> Float[Tensor, "batch pos d_model"]: ...

    def readout(self, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]: ...

    def audio_token_mask(self, input_ids: Int[Tensor, "batch pos"]) -> Tensor: ...

    def prepare(self, audio: Any = None, prompt: Any = None, **kwargs: Any) -> Mapping: ...

    def prepare_like(self, inp: Any, audio: Any) -> Mapping: ...
