"""`HookedLALM`: audio encoder + projector + a HookedTransformer-shaped LM.

Data flow: log-mel features -> `audio_encoder` -> `audio_projector` ->
`hook_audio_embeds` (`[n_audio_tokens, d_model]`, all clips in order) ->
written into the audio placeholder positions of the token embeddings ->
`hook_embed` (the merged input, i.e. the first residual stream) -> `blocks` ->
`ln_final` -> `unembed`. The LM parts sit at the top level with
HookedTransformer names, so `ActivationCache`, `get_act_name` and
`transformer_lens.patching` work unchanged.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Optional, Union

import torch
from jaxtyping import Float, Int
from torch import Tensor, nn
from transformer_lens import ActivationCache
from transformer_lens.hook_points import HookPoint
from transformer_lens.HookedRootModule import HookedRootModule

from lalm_lens.components.block import TransformerBlock, make_norm
from lalm_lens.components.embed import Embed
from lalm_lens.components.encoders import build_encoder
from lalm_lens.components.kv_cache import KVCache
from lalm_lens.components.masks import LMContext, attention_bias
from lalm_lens.components.multimodal_rotary import make_rotary
from lalm_lens.components.projector_registry import build_projector
from lalm_lens.components.rotary import Rotary
from lalm_lens.components.unembed import TiedUnembed, Unembed
from lalm_lens.config import LALMConfig
from lalm_lens.features.splice import SpliceMixin
from lalm_lens.inputs.prepared import PreparedInput

MODEL_INPUTS = ("input_ids", "attention_mask", "input_features", "feature_attention_mask", "position_ids", "audio_embeds")
INPUT_ALIASES = {"input_features_mask": "feature_attention_mask"}  # Audio Flamingo 3's processor
IGNORED_INPUTS = ("num_audio_tokens", "token_type_ids")


class HookedLALM(SpliceMixin, HookedRootModule):
    """A hookable large audio language model with converted weights.

    Build one with `HookedLALM.from_pretrained(name_or_path)`; `HookedLALM(config)`
    gives a randomly initialised model of the same shape. The loader passes what
    it knows of the checkpoint: its `family` (a `Family` value), its `prompts`
    (the family's `PromptBuilder`, None without processor files) and its
    `name_or_path`; all three are None for a model built from a config.
    """

    def __init__(self, config: LALMConfig, *, family: Any = None, prompts: Any = None,
                 name_or_path: Optional[str] = None):
        super().__init__()
        self.config = config
        self.cfg = config.lm
        cfg = self.cfg
        self.audio_encoder = build_encoder(config.encoder)
        self.audio_projector = build_projector(config.projector, cfg.dtype)
        self.embed = Embed(cfg)
        self.hook_audio_embeds = HookPoint()  # [n_audio_tokens, d_model]
        self.hook_embed = HookPoint()  # [batch, pos, d_model]: token + audio embeddings
        self.rotary = make_rotary(cfg)
        self.blocks = nn.ModuleList(TransformerBlock(cfg, layer) for layer in range(cfg.n_layers))
        self.ln_final = make_norm(cfg)
        self.unembed = TiedUnembed(cfg, self.embed) if cfg.tie_word_embeddings else Unembed(cfg)
        self.family = family
        self.prompts = prompts
        self.processor = prompts.processor if prompts is not None else None
        self.tokenizer = prompts.tokenizer if prompts is not None else None
        self.name_or_path = name_or_path
        self.setup()

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_pretrained(
        cls, name_or_path: str, device: Union[str, torch.device, None] = None, dtype: Optional[torch.dtype] = None, **kwargs: Any
    ) -> "HookedLALM":
        """Load a checkpoint (hub id or local folder); the family comes from `config.json`, and a family
        with a model class of its own (e.g. Granite Speech) gets an instance of that class."""
        from lalm_lens.loading import load_pretrained  # above this module: the registry holds subclasses of it

        return load_pretrained(cls, name_or_path, device=device, dtype=dtype, **kwargs)

    def init_weights(self, std: float = 0.02, seed: Optional[int] = None) -> "HookedLALM":
        """Random normal weights, unit norms; for toy models and benchmarks."""
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        with torch.no_grad():
            for name, p in self.named_parameters():
                if name.endswith((".w", "ln_post.w", "ln_final.w")):
                    p.fill_(1.0)
                elif name.split(".")[-1].startswith("b") or name.endswith(".b"):
                    p.zero_()
                else:
                    p.copy_(torch.randn(p.shape, generator=gen) * std)
        return self

    def reset_buffers(self) -> None:
        """Recompute the non-persistent buffers (after materialising from the meta device)."""
        self.rotary.inv_freq = Rotary(self.cfg.d_head, self.cfg.rotary_base, self.cfg.rope_scaling).inv_freq.to(self.device)

    def set_use_expert_outputs(self, use: bool) -> None:
        """Hook each expert's weighted output in MoE layers (`blocks.{l}.mlp.hook_expert_out`, `[batch, pos,
        n_experts, d_model]`, 0 where not chosen; costs n_experts copies of the stream per layer)."""
        self.cfg.use_expert_outputs = use

    @property
    def device(self) -> torch.device:
        return self.embed.W_E.device

    # ------------------------------------------------------------------ forward, from its pieces
    def forward(
        self,
        input: Union[PreparedInput, Mapping, Tensor, None] = None,
        *,
        return_type: Optional[str] = "logits",
        kv_cache: Optional[KVCache] = None,
        stop_at_layer: Optional[int] = None,
        **kwargs: Any,
    ) -> Optional[Tensor]:
        """Logits `[batch, pos, d_vocab]` for a prepared input, a dict of the HF
        processor's tensors (or the same as keywords), or a tensor of token ids.

        `stop_at_layer=l` returns the residual stream entering block l;
        `return_type=None` returns nothing (for hooks only). The trace engines
        call the same pieces: `embed_inputs`, `lm_context`, `run_blocks`, `readout`.
        """
        inputs = self.model_inputs(input, kwargs)
        input_ids = inputs["input_ids"]
        resid = self.embed_inputs(
            input_ids, inputs.get("input_features"), inputs.get("feature_attention_mask"), inputs.get("audio_embeds")
        )
        past = len(kv_cache) if kv_cache is not None else 0
        ctx = self.lm_context(input_ids.shape[1], past, inputs.get("attention_mask"), inputs.get("position_ids"),
                              resid.dtype, input_ids=input_ids)
        resid = self.run_blocks(resid, ctx, 0, stop_at_layer, kv_cache)
        if stop_at_layer is not None:
            return resid
        logits = self.readout(resid)
        return logits if return_type is not None else None

    def model_inputs(self, input: Any, kwargs: Optional[dict] = None) -> dict[str, Tensor]:
        """The model's input tensors, on its device, from any accepted form (see `forward`)."""
        kwargs = dict(kwargs or {})
        if isinstance(input, Tensor):
            kwargs = {"input_ids": input, **kwargs}
        elif isinstance(input, Mapping):
            kwargs = {**dict(input.items()), **kwargs}
        elif input is not None:
            raise TypeError(f"cannot run the model on a {type(input).__name__}")
        kwargs = {INPUT_ALIASES.get(k, k): v for k, v in kwargs.items()}
        unknown = set(kwargs) - set(MODEL_INPUTS) - set(IGNORED_INPUTS)
        if unknown:
            raise TypeError(f"unexpected model input(s) {sorted(unknown)}; expected some of {MODEL_INPUTS}")
        if kwargs.get("input_ids") is None:
            raise ValueError("the model needs input_ids (a prepared input, the processor's output, or token ids)")
        out = {k: v.to(self.device) for k, v in kwargs.items() if k in MODEL_INPUTS and v is not None}
        if out["input_ids"].ndim == 1:
            out = {k: v[None] if k != "input_features" else v for k, v in out.items()}
        return out

    def lm_context(
        self,
        n_new: int,
        past: int = 0,
        attention_mask: Optional[Tensor] = None,
        position_ids: Optional[Tensor] = None,
        dtype: Optional[torch.dtype] = None,
        input_ids: Optional[Tensor] = None,
    ) -> LMContext:
        """Mask and rotary tables for `n_new` queries after `past` cached positions.

        Positions default to the rotary component's own (`0, 1, ...` after the cache;
        multimodal RoPE derives them from `input_ids`); the mask is causal, with the
        padding of `attention_mask` and the sliding window if the LM has one.
        """
        dtype = dtype or self.cfg.dtype
        if past + n_new > self.cfg.n_ctx:
            raise ValueError(
                f"the input has {past + n_new} positions; this model's context is {self.cfg.n_ctx} "
                "(shorten the audio or the prompt)"
            )
        if position_ids is None:
            position_ids = self.rotary.positions(n_new, past, input_ids, attention_mask, self.device)
        key_valid = attention_mask.bool() if attention_mask is not None else None
        q_positions = torch.arange(past, past + n_new, device=self.device)
        mask = attention_bias(q_positions, past + n_new, causal=True, key_valid=key_valid,
                              sliding_window=self.cfg.sliding_window, dtype=dtype)
        return LMContext(mask, self.rotary.cos_sin(position_ids.to(self.device), dtype))

    def run_blocks(
        self,
        resid: Float[Tensor, "batch pos d_model"],
        ctx: LMContext,
        start: int = 0,
        stop: Optional[int] = None,
        kv_cache=None,
    ) -> Float[Tensor, "batch pos d_model"]:
        """Blocks `start..stop-1` on `resid` (the queries of `ctx`, after the positions in `kv_cache`)."""
        for block in self.blocks[start:stop]:
            resid = block(resid, ctx.mask, ctx.rope, kv_cache)
        return resid

    def readout(self, resid: Float[Tensor, "batch pos d_model"]) -> Float[Tensor, "batch pos d_vocab"]:
        """`ln_final` then the unembedding."""
        return self.unembed(self.ln_final(resid))

    # ------------------------------------------------------------------ audio
    def encode_audio(
        self, input_features: Float[Tensor, "clips n_mels frames"], feature_attention_mask: Optional[Tensor] = None,
        input_ids: Optional[Tensor] = None,
    ) -> Float[Tensor, "n_audio_tokens d_model"]:
        """Audio vectors for every clip, concatenated in order (`hook_audio_embeds`); `input_ids` tell
        which clip each window belongs to (Music Flamingo's rotary time needs them)."""
        frame_mask = feature_attention_mask.bool() if feature_attention_mask is not None else None
        taps = getattr(self.audio_projector, "taps", ())
        enc = self.audio_encoder(input_features.to(self.device), frame_mask, keep_layers=taps)
        enc.input_ids = input_ids
        embeds, lengths = self.audio_projector(enc)
        keep = torch.arange(embeds.shape[1], device=embeds.device)[None, :] < lengths[:, None].to(embeds.device)
        return self.hook_audio_embeds(embeds[keep])

    def audio_token_mask(self, input_ids: Int[Tensor, "batch pos"]) -> Tensor:
        """Which positions receive audio vectors (the audio token, plus any tag tokens a
        family overwrites too, e.g. Qwen-Audio's `<audio>`/`</audio>`)."""
        ids = (self.config.audio_token_id, *self.config.extra.get("audio_span_ids", ()))
        if len(ids) == 1:
            return input_ids == ids[0]
        return torch.isin(input_ids, torch.tensor(ids, device=input_ids.device))

    def embed_inputs(
        self,
        input_ids: Tensor,
        input_features: Optional[Tensor] = None,
        feature_attention_mask: Optional[Tensor] = None,
        audio_embeds: Optional[Tensor] = None,
    ) -> Float[Tensor, "batch pos d_model"]:
        """Token embeddings with the audio vectors written into the placeholders (`hook_embed`).

        `audio_embeds` (`[n_audio_tokens, d_model]`) replaces the encoder's output,
        e.g. to reuse or edit audio vectors; it still passes `hook_audio_embeds`.
        """
        x = self.embed(input_ids)
        slots = self.audio_token_mask(input_ids)
        n_slots = int(slots.sum())
        if audio_embeds is None and input_features is None:
            if n_slots and input_ids.shape[1] > 1:
                raise ValueError(f"the input holds {n_slots} audio placeholder token(s) but no input_features")
            return self.hook_embed(x)
        if n_slots == 0:
            raise ValueError(
                f"audio was given but the prompt has no audio placeholder (token id {self.config.audio_token_id}); "
                "build the prompt with model.prepare() or the checkpoint's processor"
            )
        if audio_embeds is not None:
            audio = self.hook_audio_embeds(audio_embeds.to(self.device))
        else:
            audio = self.encode_audio(input_features, feature_attention_mask, input_ids)
        if n_slots != audio.shape[0]:
            hint = ""
            if input_features is not None and n_slots == input_features.shape[0]:
                hint = " (one unexpanded placeholder per clip: expand it to one token per audio vector, as the processor does)"
            raise ValueError(
                f"the prompt has {n_slots} audio placeholder token(s) but the audio gives {audio.shape[0]} vectors{hint}"
            )
        x = x.masked_scatter(slots[..., None].to(x.device), audio.to(x.dtype))
        return self.hook_embed(x)

    # ------------------------------------------------------------------ TransformerLens surface
    def run_with_cache(self, *args: Any, remove_batch_dim: bool = False, **kwargs: Any):
        """Like TransformerLens: returns `(logits, ActivationCache)`."""
        out, cache = super().run_with_cache(*args, remove_batch_dim=remove_batch_dim, **kwargs)
        return out, ActivationCache(cache, self, has_batch_dim=not remove_batch_dim)

    def with_audio(self, inp: Mapping) -> "AudioBoundModel":
        """A view whose forward takes token ids only, the audio of `inp` bound (for `transformer_lens.patching`)."""
        from lalm_lens.audio_bound import AudioBoundModel

        return AudioBoundModel(self, inp)

    def set_use_attn_result(self, use: bool) -> None:
        """Per-head attention outputs at `blocks.{l}.attn.hook_result` ([batch, pos, head, d_model]), as in TransformerLens."""
        self.cfg.use_attn_result = bool(use)

    def set_use_split_qkv_input(self, use: bool) -> None:
        """Per-head q/k/v inputs at `blocks.{l}.hook_{q,k,v}_input` (k/v: one per key/value head under GQA)."""
        self.cfg.use_split_qkv_input = bool(use)

    def set_use_hook_mlp_in(self, use: bool) -> None:
        """The MLP's input (the residual before `ln2`) at `blocks.{l}.hook_mlp_in`."""
        self.cfg.use_hook_mlp_in = bool(use)

    @property
    def W_U(self) -> Tensor:
        return self.unembed.W_U

    @property
    def b_U(self) -> Tensor:
        return self.unembed.b_U

    @property
    def W_E(self) -> Tensor:
        return self.embed.W_E

    def require_tokenizer(self):
        """The checkpoint's tokenizer, or a clear error when the folder had none."""
        if self.tokenizer is None:
            raise RuntimeError("this model has no tokenizer (the checkpoint folder holds none)")
        return self.tokenizer

    def to_tokens(self, text: Union[str, list[str]], prepend_bos: bool = False) -> Tensor:
        tok = self.require_tokenizer()
        ids = tok(text if isinstance(text, list) else [text], add_special_tokens=prepend_bos, padding=True, return_tensors="pt")
        return ids["input_ids"].to(self.device)

    def to_str_tokens(self, tokens: Union[Tensor, list[int], Mapping]) -> list:
        """Token strings of ids, or of a prepared input's `input_ids` (one list per row when it has several)."""
        if isinstance(tokens, Mapping):
            ids = tokens["input_ids"]
            if ids.ndim == 2 and ids.shape[0] > 1:
                return [self.to_str_tokens(row) for row in ids]
            tokens = ids
        ids = tokens.flatten().tolist() if isinstance(tokens, Tensor) else list(tokens)
        return self.require_tokenizer().convert_ids_to_tokens(ids)

    def to_single_token(self, text: str) -> int:
        ids = self.require_tokenizer().encode(text, add_special_tokens=False)
        if len(ids) != 1:
            raise ValueError(f"{text!r} is {len(ids)} tokens, not one: {self.to_str_tokens(ids)}")
        return ids[0]

    def tokens_to_residual_directions(self, tokens: Union[str, int, Tensor]) -> Tensor:
        """Unembedding directions in the space `ln_final` normalises into (its weight folded in)."""
        if isinstance(tokens, str):
            tokens = self.to_single_token(tokens)
        tokens = torch.as_tensor(tokens, device=self.device)
        directions = (self.W_U * self.ln_final.w[:, None])[:, tokens]
        return directions.movedim(0, -1)

    # ------------------------------------------------------------------ inputs and decoding
    def prepare(self, audio=None, prompt=None, **kwargs: Any) -> PreparedInput:
        """Build an input through the checkpoint's own processor and chat template.

        `audio`: path, array or tensor (or a list of them); `prompt`: the user's
        text; `answer_prefix`: text after the generation prompt; `options`: the
        answer options named in the prompt (marked as the `object` token group);
        `sampling_rate`: the array's rate (resampled when different).
        """
        if self.prompts is None:
            raise RuntimeError(
                "this model has no processor: the checkpoint folder holds no processor/tokenizer files. "
                "Pass the processor's tensors to model(...) directly, or load a folder with them."
            )
        return self.prompts.prepare(audio=audio, prompt=prompt, **kwargs)

    def prepare_like(self, inp: PreparedInput, audio) -> PreparedInput:
        """The same prompt as `inp` with other audio (e.g. silence for a corrupted run)."""
        return self.prepare(audio=audio, **{**inp.prepare_kwargs, "sampling_rate": inp.sampling_rate})

    @torch.no_grad()
    def generate(self, inp: Union[PreparedInput, Mapping], max_new_tokens: int = 20, return_type: str = "str", **kwargs: Any):
        """Greedy decoding with the KV cache; returns the continuation (text, or token ids)."""
        from lalm_lens.generation import greedy_generate

        tokens = greedy_generate(self, inp, max_new_tokens=max_new_tokens, **kwargs)
        if return_type == "tokens":
            return tokens
        texts = self.require_tokenizer().batch_decode(tokens, skip_special_tokens=True)
        return texts[0] if len(texts) == 1 else texts
