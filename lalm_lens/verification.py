"""`verify`: run the original model and the hooked one on the same input and compare.

What a user runs once on a GPU with a real checkpoint (`lalm-lens verify MODEL`).
Tolerance: float32 max |Δlogits| ≤ 1e-4 · max(1, max |logits|); bfloat16 and
float16 ≤ 5 % of max |logits| (the two sides round at different points), and
in every dtype the final position's top-1 token must agree.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

import numpy as np
import torch

from lalm_lens.loading import open_checkpoint
from lalm_lens.model import HookedLALM

RELATIVE_TOLERANCE = {torch.float32: 1e-4, torch.float64: 1e-6, torch.bfloat16: 0.05, torch.float16: 0.05}


def synthetic_clip(seconds: float = 3.0, rate: int = 16000) -> np.ndarray:
    """A chirp with a little noise, used when no audio file is given."""
    t = np.arange(int(seconds * rate)) / rate
    chirp = np.sin(2 * np.pi * (200 * t + 300 * t**2))
    noise = np.random.default_rng(0).standard_normal(t.shape)
    return (0.4 * chirp + 0.02 * noise).astype(np.float32)


@dataclass
class VerifyReport:
    name: str
    dtype: torch.dtype
    max_logit_diff: float
    logit_scale: float
    tolerance: float
    top1_agrees: bool
    lm_layers: list[float] = field(default_factory=list)  # max |Δ| of the residual entering each layer, then the normed output
    encoder_layers: list[float] = field(default_factory=list)  # max |Δ| after each encoder block
    audio_embeds_diff: Optional[float] = None

    @property
    def passed(self) -> bool:
        return self.max_logit_diff <= self.tolerance and self.top1_agrees

    def __str__(self) -> str:
        lines = [f"verify {self.name} ({str(self.dtype).replace('torch.', '')})"]
        if self.encoder_layers:
            lines.append("  audio encoder, max |Δ| after each block:")
            lines += [f"    block {i:3d}: {d:.3e}" for i, d in enumerate(self.encoder_layers)]
        if self.audio_embeds_diff is not None:
            lines.append(f"  audio vectors (projector output): {self.audio_embeds_diff:.3e}")
        lines.append("  LM, max |Δ| of the residual entering each layer (last: final norm output):")
        lines += [f"    layer {i:3d}: {d:.3e}" for i, d in enumerate(self.lm_layers)]
        lines.append(
            f"  max |Δlogits| = {self.max_logit_diff:.3e} (max |logits| {self.logit_scale:.2f}, "
            f"tolerance {self.tolerance:.3e}); final top-1 {'agrees' if self.top1_agrees else 'DIFFERS'}"
        )
        lines.append("PASS" if self.passed else "FAIL")
        return "\n".join(lines)


def _diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return (a.float().to(b.device) - b.float()).abs().max().item()


def _top1_agrees(ours: torch.Tensor, ref: torch.Tensor, tol: float) -> bool:
    """Our top-1 token is the original's, or ties with it within the tolerance."""
    ref = ref.to(ours.device)
    chosen = ref.float().gather(-1, ours.argmax(-1, keepdim=True))[..., 0]
    return bool((chosen >= ref.float().max(-1).values - tol).all())


def _encoder_valid_positions(model, inp) -> Optional[int]:
    """Encoder positions both sides compute from real audio (ours crops padded frames; None: all of them)."""
    mask = inp.get("feature_attention_mask")
    if not hasattr(model.audio_encoder, "output_lengths"):  # an encoder that crops nothing (Granite's conformer)
        return None
    if mask is None:
        return model.config.encoder.n_ctx
    valid, _ = model.audio_encoder.output_lengths(mask.sum(-1))
    return int(valid.min())


@dataclass
class _OurStates:
    """Our side of a comparison, on the CPU: what `verify` keeps of the hooked model before the original runs."""

    logits: torch.Tensor
    lm: list  # the residual entering each layer, then the final norm's output
    encoder: list  # each encoder block's output
    audio_embeds: Optional[torch.Tensor]
    encoder_valid: Optional[int]  # encoder positions both sides compute from real audio (None: all)


def _our_states(model, inp) -> _OurStates:
    """Run the hooked model once, caching only the compared states (one residual per layer)."""
    n, n_enc = model.cfg.n_layers, len(model.audio_encoder.blocks)
    compared = {f"blocks.{i}.hook_resid_pre" for i in range(n)} | {f"blocks.{n - 1}.hook_resid_post", "hook_audio_embeds"}
    compared |= {f"audio_encoder.blocks.{i}.hook_resid_post" for i in range(n_enc)}
    logits, cache = model.run_with_cache(inp, names_filter=lambda name: name in compared)
    cpu = lambda t: t.detach().to("cpu")  # noqa: E731
    lm = [cpu(cache[f"blocks.{i}.hook_resid_pre"]) for i in range(n)]
    lm.append(cpu(model.ln_final(cache[f"blocks.{n - 1}.hook_resid_post"])))
    encoder = [cpu(cache[f"audio_encoder.blocks.{i}.hook_resid_post"]) for i in range(n_enc)
               if f"audio_encoder.blocks.{i}.hook_resid_post" in cache]
    audio = cpu(cache["hook_audio_embeds"]) if "hook_audio_embeds" in cache else None
    return _OurStates(cpu(logits), lm, encoder, audio, _encoder_valid_positions(model, inp))


@torch.no_grad()
def verify(
    name_or_path: str,
    audio=None,
    prompt: str = "Describe the audio.",
    dtype: Optional[torch.dtype] = None,
    device: Union[str, torch.device, None] = None,
    prepare_kwargs: Optional[dict] = None,
    sequential: bool = False,
    **load_kwargs,
) -> VerifyReport:
    """Load both models from `name_or_path`, run one input, return a `VerifyReport`.

    `prepare_kwargs` go to `model.prepare` (e.g. `transcript=` for DeSTA);
    `load_kwargs` to `from_pretrained` and the reference (e.g. `encoder_path=`).
    Only the states compared are kept (one residual per layer, on the CPU), so a
    32-layer encoder does not cache its attention patterns. Ours runs first;
    `sequential=True` frees it before the original is loaded, so the two copies
    never share the device (a 30 B model in float32 fits one 141 GB GPU once, not twice).
    """
    import gc

    ckpt, family, family_config = open_checkpoint(name_or_path, **load_kwargs)
    model = HookedLALM.from_pretrained(ckpt, device=device, dtype=dtype, **load_kwargs)
    dtype, device = model.cfg.dtype, model.device
    if audio is None:
        audio = synthetic_clip(rate=16000)
    rate = None if isinstance(audio, str) else 16000
    inp = model.prepare(audio, prompt, sampling_rate=rate, **(prepare_kwargs or {})).to(device)
    ours = _our_states(model, inp)
    if sequential:
        del model
        gc.collect()
        if device.type == "cuda":
            torch.cuda.empty_cache()
    ref = family.reference.load(ckpt, family_config, dtype, device)
    enc_outputs: list[torch.Tensor] = []
    handles = [
        layer.register_forward_hook(  # a copy: an original may add to a block's output in place (Granite's CTC)
            lambda mod, args, out: enc_outputs.append((out[0] if isinstance(out, tuple) else out).clone()))
        for layer in family.reference.encoder_layers(ref)
    ]
    try:
        out = family.reference.forward(ref, inp)
    finally:
        for h in handles:
            h.remove()
    n, valid = len(ours.lm) - 1, ours.encoder_valid
    lm = [_diff(ours.lm[i], out.hidden_states[i]) for i in range(n + 1)]
    encoder = [  # positions both computed (Voxtral Realtime's original encodes only the steps its prompt hears)
        _diff(mine[:, :h.shape[1] if valid is None else min(valid, h.shape[1])], h[:, :valid])
        for mine, h in zip(ours.encoder, enc_outputs)
    ]
    audio_diff = None
    if getattr(out, "audio_embeds", None) is not None:
        audio_diff = _diff(ours.audio_embeds, out.audio_embeds)
    ref_logits = out.logits
    scale = ref_logits.float().abs().max().item()
    tol = RELATIVE_TOLERANCE.get(dtype, 0.05) * max(1.0, scale)
    return VerifyReport(
        name=str(name_or_path),
        dtype=dtype,
        max_logit_diff=_diff(ours.logits, ref_logits),
        logit_scale=scale,
        tolerance=tol,
        top1_agrees=_top1_agrees(ours.logits[:, -1], ref_logits[:, -1].cpu(), tol),
        lm_layers=lm,
        encoder_layers=encoder,
        audio_embeds_diff=audio_diff,
    )
