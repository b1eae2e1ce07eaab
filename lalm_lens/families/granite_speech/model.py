"""`GraniteSpeechLALM`: `HookedLALM` with Granite's LM parts and a switch for its LoRA adapter.

Granite's LM scales its input (`embed`, and the audio vectors in the projector), each
block's sub-layer outputs and attention scores, and divides its logits; the blocks carry
the adapter as separate `LoRA` modules (`blocks.{l}.attn.lora_q`, `lora_v`, ...).

The released model uses its adapter only when the input holds audio (its `generate`
turns it on or off per call). `lora_mode` says what this model does:
- "auto" (default): each forward decides from its own input — on with `input_features`
  or `audio_embeds`, off without; a call continuing a KV cache keeps the state of the call
  that filled it (so generation keeps the prompt's choice, as the original's does). Code
  that runs pieces of the model (`run_blocks`, the fast trace engine's suffixes) runs with
  the state of the last forward.
- "on" / "off": always, whatever the input.
`with model.using_lora("off"): ...` sets the mode for a block of code.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Optional

from torch import nn

from lalm_lens.components.granite_block import GraniteBlock
from lalm_lens.components.lora import LoRA
from lalm_lens.components.scaled_embed import ScaledEmbed
from lalm_lens.components.scaled_unembed import ScaledTiedUnembed, ScaledUnembed
from lalm_lens.config import LALMConfig
from lalm_lens.model import HookedLALM

LORA_MODES = ("auto", "on", "off")


class GraniteSpeechLALM(HookedLALM):
    def __init__(self, config: LALMConfig, **loaded: Any):
        super().__init__(config, **loaded)  # `loaded`: what from_pretrained knows (family, prompts, name_or_path)
        cfg = self.cfg
        self.embed = ScaledEmbed(cfg)
        self.blocks = nn.ModuleList(GraniteBlock(cfg, layer) for layer in range(cfg.n_layers))
        self.unembed = ScaledTiedUnembed(cfg, self.embed) if cfg.tie_word_embeddings else ScaledUnembed(cfg)
        self.lora_mode = "auto"
        self.setup()

    @property
    def has_lora(self) -> bool:
        return any(isinstance(m, LoRA) for m in self.modules())

    @property
    def lora_active(self) -> bool:
        """Whether the adapter is on now (for "auto": as the last forward left it)."""
        return any(m.active for m in self.modules() if isinstance(m, LoRA))

    def set_lora_active(self, active: bool) -> None:
        for module in self.modules():
            if isinstance(module, LoRA):
                module.active = active

    @contextmanager
    def using_lora(self, mode: str):
        """Within the block, the adapter is "on", "off", or "auto" (on exactly when a forward's input holds audio)."""
        if mode not in LORA_MODES:
            raise ValueError(f"lora mode must be one of {LORA_MODES}, got {mode!r}")
        if not self.has_lora:
            raise ValueError("this checkpoint has no LoRA adapter (no adapter_config.json in its folder)")
        before_mode, before_active = self.lora_mode, self.lora_active
        self.lora_mode = mode
        if mode != "auto":
            self.set_lora_active(mode == "on")
        try:
            yield self
        finally:
            self.lora_mode = before_mode
            self.set_lora_active(before_active)

    def forward(self, input: Any = None, *, return_type: Optional[str] = "logits", kv_cache=None,
                stop_at_layer: Optional[int] = None, **kwargs: Any):
        """`HookedLALM.forward`, the adapter set first by `lora_mode` (see the module docstring)."""
        if self.lora_mode != "auto":
            self.set_lora_active(self.lora_mode == "on")
        elif kv_cache is None or len(kv_cache) == 0:
            inputs = self.model_inputs(input, kwargs)
            self.set_lora_active(inputs.get("input_features") is not None or inputs.get("audio_embeds") is not None)
        return super().forward(input, return_type=return_type, kv_cache=kv_cache, stop_at_layer=stop_at_layer,
                               **kwargs)
