"""`HookedRealtimeLALM`: Voxtral Realtime, where audio and text share one time axis.

Every LM position p receives the token embedding of its text token plus the
audio vector of time step p (80 ms each, after the left-pad silence the
processor adds): `hook_embed = embed(ids) + audio[:, p]`. There are no audio
placeholders; `hook_audio_embeds` holds the whole clip's stream (`[clips x
steps, d_model]`), of which a forward uses the steps of its positions (a
prompt shorter than the audio has not heard the rest yet; this is exact because
the encoder is causal). The decoder's norms before the MLP are scaled by the
time embedding of `num_delay_tokens` (`time_embedding.hook_time`, set once per
forward; `AdaptiveRMSNorm`). Decoding with a `KVCache` keeps the stream on the
cache, so each new token hears its own time step.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional

import torch
from jaxtyping import Float
from torch import Tensor

from lalm_lens.components.adaptive_rms_norm import AdaptiveRMSNorm
from lalm_lens.components.kv_cache import KVCache
from lalm_lens.components.time_embedding import TimeEmbedding
from lalm_lens.config import LALMConfig
from lalm_lens.model import HookedLALM

DELAY = "num_delay_tokens"


def delay_steps(value) -> int:
    """One delay per forward (the time conditioning is shared by the batch, as in the original)."""
    values = torch.as_tensor(value).flatten().tolist()
    if not values or any(v != values[0] for v in values):
        raise ValueError(f"num_delay_tokens must be one value for the whole batch, got {values}")
    return int(values[0])


class HookedRealtimeLALM(HookedLALM):
    """Streaming encoder, time-aligned audio stream, time-conditioned decoder norms."""

    def __init__(self, config: LALMConfig, **loaded: Any):
        super().__init__(config, **loaded)  # `loaded`: what from_pretrained knows (family, prompts, name_or_path)
        cfg = self.cfg
        self.time_embedding = TimeEmbedding(cfg.d_model, config.extra["time_theta"])
        for block in self.blocks:
            block.ln2 = AdaptiveRMSNorm(cfg.d_model, cfg.eps, config.extra["ada_width"],
                                        self.time_embedding.condition, cfg.dtype)
        self.setup()  # again: the adaptive norms bring hook points of their own

    def reset_buffers(self) -> None:
        super().reset_buffers()
        enc = self.audio_encoder.cfg
        self.audio_encoder.rotary.inv_freq = type(self.rotary)(enc.d_head, enc.rotary_base).inv_freq.to(self.device)

    def model_inputs(self, input: Any, kwargs: Optional[dict] = None) -> dict[str, Tensor]:
        """As `HookedLALM.model_inputs`, keeping `num_delay_tokens` (the processor returns it)."""
        kwargs = dict(kwargs or {})
        delay = kwargs.pop(DELAY, None)
        if isinstance(input, Mapping) and DELAY in input:
            delay = input[DELAY] if delay is None else delay
            input = {k: v for k, v in input.items() if k != DELAY}
        out = super().model_inputs(input, kwargs)
        if delay is not None:
            out[DELAY] = torch.tensor(delay_steps(delay))
        return out

    def forward(self, input=None, *, return_type: Optional[str] = "logits", kv_cache: Optional[KVCache] = None,
                stop_at_layer: Optional[int] = None, **kwargs: Any) -> Optional[Tensor]:
        """Logits `[batch, pos, d_vocab]`, as `HookedLALM.forward`; also takes `num_delay_tokens`
        (default: the config's `default_num_delay_tokens`, as the original; kept while decoding)."""
        inputs = self.model_inputs(input, kwargs)
        ids = inputs["input_ids"]
        past = len(kv_cache) if kv_cache is not None else 0
        delay = inputs.get(DELAY)
        if delay is not None or past == 0 or self.time_embedding.condition.value is None:
            steps = int(delay) if delay is not None else self.config.extra["default_delay"]
            self.time_embedding(steps, self.cfg.dtype, self.device)
        resid = self.embed_stream(ids, inputs, past, kv_cache)
        ctx = self.lm_context(ids.shape[1], past, inputs.get("attention_mask"), inputs.get("position_ids"),
                              resid.dtype, input_ids=ids)
        resid = self.run_blocks(resid, ctx, 0, stop_at_layer, kv_cache)
        if stop_at_layer is not None:
            return resid
        logits = self.readout(resid)
        return logits if return_type is not None else None

    def embed_stream(self, input_ids: Tensor, inputs: Mapping, past: int = 0,
                     kv_cache: Optional[KVCache] = None) -> Float[Tensor, "batch pos d_model"]:
        """Token embeddings plus the audio vectors of time steps `past .. past + pos` (`hook_embed`)."""
        x = self.embed(input_ids)
        if inputs.get("audio_embeds") is not None:
            stream = self.hook_audio_embeds(inputs["audio_embeds"].to(self.device))
        elif inputs.get("input_features") is not None:
            stream = self.encode_audio(inputs["input_features"], inputs.get("feature_attention_mask"))
        else:
            stream = getattr(kv_cache, "audio_stream", None)
        if stream is None:
            return self.hook_embed(x)
        if kv_cache is not None:
            kv_cache.audio_stream = stream  # the next decoding steps hear the following time steps
        batch, n_new = input_ids.shape
        if stream.shape[0] % batch:
            raise ValueError(f"{stream.shape[0]} audio vectors do not split into {batch} rows")
        stream = stream.view(batch, -1, stream.shape[-1])
        if past + n_new > stream.shape[1]:
            raise ValueError(
                f"position {past + n_new - 1} has no audio: the clip gives {stream.shape[1]} time steps of 80 ms and "
                "every position hears one (use a longer clip, or a shorter answer prefix / fewer new tokens)")
        return self.hook_embed(x + stream[:, past: past + n_new].to(x.dtype))
