"""The fast exact engine: reuse everything a patch cannot change.

A patch at layer l and positions P (first position i0) cannot change any
position < i0 (causal attention) nor anything below layer l. So each cell only
needs positions >= i0 from its first patched layer upward, attending to the
corrupted run's cached keys/values for the prefix. Cells that patch the same
positions share the suffix: they run as one batch in which each row joins at its
own first layer (starting from the corrupted residual stream there), and the
batch is split to stay under `max_batch_tokens` rows x suffix positions.

The clean and corrupted runs go through the LM together as one batch; the audio
encoder runs once per distinct input (once in all for noise corruptions, which
perturb the clean audio vectors; noise samples are extra rows). Cells whose
leading patches are no-ops start later (`effective_layers`), and the last block
runs at the answer position only (`answer_layer.py`).
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, replace
from typing import Optional

import torch
from torch import Tensor
from transformer_lens.utilities import get_act_name

from lalm_lens.components.kv_cache import KVCache, SharedPrefixKV
from lalm_lens.components.masks import attention_bias
from lalm_lens.tracing.answer_layer import answer_only, usable
from lalm_lens.tracing.engines import answer_prob

DEFAULT_MAX_BATCH_TOKENS = 16384
_HOOK_LEVEL = -7301  # context level of the engine's own hooks, so user hooks stay untouched


@dataclass
class Runs:
    """What the joint clean + corrupted pass leaves for the suffixes."""

    p_clean: float
    clean: dict[str, Tensor]  # `states` of the clean run per hook name, [1, T, ...]
    resid_pre: list[Tensor]  # corrupted, per layer [n_runs, T - first, d_model]
    keys: list[Tensor]  # corrupted, per layer [n_runs, T, n_kv_heads, d_head]
    values: list[Tensor]
    probs: Tensor  # [n_runs] P(answer) of each corrupted run
    positions: Tensor  # [1, T] rotary positions
    key_valid: Optional[Tensor]  # [1, T] attention mask
    first: int
    unchanged: list[Tensor]  # per layer [T]: `states` equal bitwise in the clean and every corrupted run

    @property
    def n_runs(self) -> int:
        return self.probs.shape[0]


def audio_vectors(model, clean, corr) -> tuple[Optional[Tensor], Optional[Tensor]]:
    """Clean and corrupted audio vectors, the encoder run once per distinct input."""
    feats = clean.get("input_features")
    if feats is None:
        return None, None
    mask = clean.get("feature_attention_mask")
    if corr.noise is not None:
        audio = corr.clean_audio if corr.clean_audio is not None else model.encode_audio(feats, mask)
        return audio, audio.repeat(corr.n_runs, 1) + corr.noise.reshape(-1, audio.shape[-1]).to(audio.dtype)
    other, other_mask = corr.inputs.get("input_features"), corr.inputs.get("feature_attention_mask")
    if other is None:
        return model.encode_audio(feats, mask), None
    if other.shape == feats.shape and (mask is None) == (other_mask is None):
        both = model.encode_audio(torch.cat([feats, other]), None if mask is None else torch.cat([mask, other_mask]))
        half = both.shape[0] // 2
        return both[:half], both[half:]
    return model.encode_audio(feats, mask), model.encode_audio(other, other_mask)


def joint_run(model, clean, corr, states: str, answer: int, final: int, first: int) -> Runs:
    """One LM pass over [clean, corrupted x n_runs], keeping what the suffixes need."""
    n, L = corr.n_runs, model.cfg.n_layers
    clean_audio, corr_audio = audio_vectors(model, clean, corr)
    rows = 1 + n
    inputs = {"input_ids": torch.cat([clean["input_ids"], corr.inputs["input_ids"].repeat(n, 1)])}
    for key in ("attention_mask", "position_ids"):
        if clean.get(key) is not None:
            inputs[key] = clean[key].repeat(rows, 1)
    if clean_audio is not None:
        inputs["audio_embeds"] = torch.cat([clean_audio, corr_audio if corr_audio is not None else clean_audio.repeat(n, 1)])
    elif corr.inputs.get("input_features") is not None:
        raise ValueError("the corrupted input has audio but the clean one has none")
    keep = [get_act_name(states, l) for l in range(L)]
    resid = [get_act_name("resid_pre", l) for l in range(L)]
    cache = KVCache(L)
    wanted = set(keep) | set(resid)
    T = clean["input_ids"].shape[1]
    shortcut = states == "resid_pre" and usable(model.blocks[L - 1], states)  # the clean states there are its input
    last, acts = model.run_with_cache(inputs, kv_cache=cache, names_filter=lambda name: name in wanted,
                                      stop_at_layer=L - 1 if shortcut else L)
    acts = dict(acts.items())
    positions = clean.get("position_ids")
    if positions is None:
        positions = torch.arange(T, device=model.device)[None]
    if shortcut:  # the last block at the answer position only; keys/values of all positions for the suffixes
        acts[resid[-1]] = last
        mask = model.lm_mask(T, 0, inputs.get("attention_mask"), last.dtype)
        rope = model.rotary.cos_sin(positions.expand(rows, -1), last.dtype)
        last, cache.keys[L - 1], cache.values[L - 1] = answer_only(model.blocks[L - 1], last, final, mask, rope)
    else:
        last = last[:, final : final + 1]
    probs = answer_prob(model.unembed(model.ln_final(last)), 0, answer)  # final position only
    mask = clean.get("attention_mask")
    unchanged = [(acts[name][1:] == acts[name][:1]).flatten(2).all(-1).all(0).cpu() for name in keep]
    return Runs(
        p_clean=probs[0].item(),
        clean={name: acts[name][:1] for name in keep},
        resid_pre=[acts[name][1:, first:].clone() for name in resid],
        keys=[k[1:] for k in cache.keys],
        values=[v[1:] for v in cache.values],
        probs=probs[1:],
        positions=positions[:1].to(model.device),
        key_valid=None if mask is None else mask[:1].bool().to(model.device),
        first=first,
        unchanged=unchanged,
    )


def effective_layers(cell, runs: Runs) -> tuple[int, ...]:
    """The cell's layers without its leading no-op patches.

    Up to a cell's first layer the patched run is the corrupted run, so where the
    clean state equals the corrupted one there (always so for `resid_pre` at layer
    0 on text tokens, and at every layer before the audio), restoring it changes
    nothing and the cell effectively starts one layer later. A cell left with no
    layers is the corrupted run itself.
    """
    layers = list(cell.layers)
    while layers and bool(runs.unchanged[layers[0]][list(cell.positions)].all()):
        layers.pop(0)
    return tuple(layers)


def _restore(clean: Tensor, rows: Tensor, rel: list[int], positions: list[int]):
    def hook(act: Tensor, hook) -> Tensor:
        act[rows[:, None], torch.tensor(rel, device=act.device)[None, :]] = clean[0, positions].to(act.dtype)
        return act

    return hook


def run_suffix(model, runs: Runs, states: str, cells: list, positions: tuple[int, ...], answer: int,
               final: int) -> Tensor:
    """P(answer) for `cells` (all restoring `positions`), averaged over the corrupted runs."""
    n_runs, i0 = runs.n_runs, min(positions)
    T = runs.keys[0].shape[1]
    rel = [p - i0 for p in positions]
    prefix = SharedPrefixKV([k[:, :i0] for k in runs.keys], [v[:, :i0] for v in runs.values])
    dtype = runs.resid_pre[0].dtype
    mask = attention_bias(torch.arange(i0, T, device=model.device), T, causal=True, key_valid=runs.key_valid,
                          sliding_window=model.cfg.sliding_window, dtype=dtype)
    rope = model.rotary.cos_sin(runs.positions[:, i0:], dtype)
    starts = [min(c.layers) for c in cells]
    order = sorted(range(len(cells)), key=lambda j: starts[j])  # rows join in this order
    L, at = model.cfg.n_layers, final - i0
    shortcut = 0 <= at < T - i0 and usable(model.blocks[L - 1], states)
    x, joined = None, []
    for layer in range(starts[order[0]], L):
        joining = [j for j in order if starts[j] == layer]
        if joining:
            new = runs.resid_pre[layer][:, i0 - runs.first:].repeat(len(joining), 1, 1)
            x = new if x is None else torch.cat([x, new])
            joined += joining
        patch = [r for r, j in enumerate(joined) if layer in cells[j].layers]
        rows = torch.tensor([r * n_runs + s for r in patch for s in range(n_runs)], device=x.device)
        name = get_act_name(states, layer)
        restore = _restore(runs.clean[name], rows, rel, list(positions)) if patch else None
        last = shortcut and layer == L - 1
        if last and restore is not None:
            if states == "resid_pre":
                restore, x = None, restore(x, None)  # before the keys of every position are projected
            elif final in positions:
                restore = _restore(runs.clean[name], rows, [0], [final])  # only the answer position runs
            else:
                restore = None  # cannot reach the answer
        hook_point = model.hook_dict[name] if restore is not None else None
        if hook_point is not None:
            hook_point.add_hook(restore, level=_HOOK_LEVEL)
        try:
            if last:
                x = answer_only(model.blocks[layer], x, at, mask, rope, prefix)[0]
            else:
                x = model.blocks[layer](x, mask, rope, prefix)
        finally:
            if hook_point is not None:
                hook_point.remove_hooks("fwd", level=_HOOK_LEVEL)
    logits = model.unembed(model.ln_final(x[:, 0 if shortcut else at].unsqueeze(1)))[:, 0]
    probs = logits.float().softmax(-1)[:, answer].view(len(joined), n_runs).mean(1)
    out = torch.empty(len(cells), dtype=torch.float64)
    out[torch.tensor(joined)] = probs.double().cpu()
    return out


@torch.no_grad()
def fast_engine(model, clean, corr, *, states, cells, answer, final, max_batch_tokens=None, **_):
    """Same numbers as the reference engine (float32 within 1e-5), far fewer FLOPs."""
    budget = max_batch_tokens or DEFAULT_MAX_BATCH_TOKENS
    on_device = lambda inputs: {k: v.to(model.device) for k, v in inputs.items() if isinstance(v, Tensor)}  # noqa: E731
    clean, corr = on_device(clean), replace(corr, inputs=on_device(corr.inputs))
    cells = list(cells)  # trimmed copies replace entries below
    first = min(min(c.positions) for c in cells)
    runs = joint_run(model, clean, corr, states, answer, final, first)
    out = torch.full((len(cells),), runs.probs.mean().item(), dtype=torch.float64)  # no-op cells keep this
    by_positions: dict[tuple, list[int]] = defaultdict(list)
    for j, cell in enumerate(cells):
        layers = effective_layers(cell, runs)
        if layers:
            cells[j] = replace(cell, layers=layers)
            by_positions[cell.positions].append(j)
    T = runs.keys[0].shape[1]
    for positions, members in by_positions.items():
        size = max(1, budget // ((T - min(positions)) * runs.n_runs))
        for start in range(0, len(members), size):
            chunk = members[start : start + size]
            out[chunk] = run_suffix(model, runs, states, [cells[j] for j in chunk], positions, answer, final)
    return runs.p_clean, runs.probs.mean().item(), out
