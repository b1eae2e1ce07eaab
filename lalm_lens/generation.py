"""Greedy decoding with the key/value cache (mirrors Hugging Face `generate`)."""

from __future__ import annotations

from typing import Optional, Sequence

import torch
from torch import Tensor

from lalm_lens.components.kv_cache import KVCache


def greedy_generate(
    model,
    inp,
    max_new_tokens: int = 20,
    eos_token_ids: Optional[Sequence[int]] = None,
    pad_token_id: Optional[int] = None,
    interventions: Sequence = (),
) -> Tensor:
    """New token ids `[batch, n_new]`; rows that stop early are padded with `pad_token_id`.

    Positions follow the attention mask (`cumsum - 1`, as HF does for
    left-padded batches); the prompt is run once and then one token per step.
    `interventions` (`lalm_lens.features.interventions` values) hook every step.
    """
    from lalm_lens.features.interventions import intervention_hooks

    with model.hooks(fwd_hooks=intervention_hooks(model, interventions, inp)):
        return _greedy(model, inp, max_new_tokens, eos_token_ids, pad_token_id)


def _greedy(model, inp, max_new_tokens, eos_token_ids, pad_token_id) -> Tensor:
    inputs = model.model_inputs(inp)
    ids = inputs["input_ids"]
    attn = inputs.get("attention_mask", torch.ones_like(ids))
    eos = torch.tensor(list(model.config.eos_token_ids if eos_token_ids is None else eos_token_ids), device=ids.device)
    pad = pad_token_id if pad_token_id is not None else model.config.pad_token_id
    if pad is None:
        pad = int(eos[0]) if len(eos) else 0
    positions = (attn.long().cumsum(-1) - 1).masked_fill(attn == 0, 0)
    cache = KVCache(model.cfg.n_layers)
    audio = {k: v for k, v in inputs.items() if k not in ("input_ids", "attention_mask", "position_ids")}
    logits = model(input_ids=ids, attention_mask=attn, position_ids=positions, kv_cache=cache, **audio)
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=ids.device)
    out = []
    for _ in range(max_new_tokens):
        token = logits[:, -1].argmax(-1)
        token = torch.where(done, torch.full_like(token, pad), token)
        out.append(token)
        done |= torch.isin(token, eos)
        if bool(done.all()):
            break
        attn = torch.cat([attn, torch.ones_like(attn[:, :1])], dim=1)
        positions = positions[:, -1:] + 1
        logits = model(input_ids=token[:, None], attention_mask=attn, position_ids=positions, kv_cache=cache)
    return torch.stack(out, dim=1) if out else ids.new_zeros(ids.shape[0], 0)
