"""`causal_trace`: the paper's clean / corrupted / patched runs on one item.

Score: P(answer) at the final position. Recovery:
RR = (P_patched − P_corrupted) / (P_clean − P_corrupted).
`mode="tokens"` restores one position at a time (cell = layer x position);
`mode="layers"` restores all `positions` at once at each layer. For `attn_out`
and `mlp_out` (or any state) `window=w` restores layers
`[l - w//2, l + ceil(w/2))` clipped at the ends, as ROME does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping, Optional, Sequence, Union

import torch
from transformer_lens.utilities import get_act_name

from lalm_lens.inputs.prepared import PreparedInput
from lalm_lens.tracing.corruption import Corruption, check_same_layout, make_corruption
from lalm_lens.tracing.engines import answer_prob  # noqa: F401  (re-exported)
from lalm_lens.tracing.groups import final_position, non_audio_positions, special_positions, token_groups
from lalm_lens.tracing.result import TraceResult


@dataclass(frozen=True)
class Cell:
    """One patched run: restore `states` at `layers` for `positions`."""

    layers: tuple[int, ...]
    positions: tuple[int, ...]


def window_layers(layer: int, window: int, n_layers: int) -> tuple[int, ...]:
    return tuple(range(max(0, layer - window // 2), min(n_layers, layer - (-window // 2))))


def build_cells(mode: str, layers: Sequence[int], positions: Sequence[int], window: int, n_layers: int) -> list[Cell]:
    if mode == "tokens":
        return [Cell(window_layers(l, window, n_layers), (p,)) for l in layers for p in positions]
    if mode == "layers":
        return [Cell(window_layers(l, window, n_layers), tuple(positions)) for l in layers]
    raise ValueError(f"mode must be 'tokens' or 'layers', got {mode!r}")


def answer_token(model, inp: Mapping, answer: Union[int, str]) -> tuple[int, str]:
    """The answer's token id. A string is tokenised as it continues the input: with a
    leading space unless the input ends in whitespace (BPE tokenisers mark the space
    in the token). It must be exactly one token."""
    if isinstance(answer, (int, torch.Tensor)) and not isinstance(answer, bool):
        token = int(answer)
        if not 0 <= token < model.cfg.d_vocab:
            raise ValueError(f"answer token {token} is outside the vocabulary (0..{model.cfg.d_vocab - 1})")
        label = model.tokenizer.decode([token]) if model.tokenizer is not None else str(token)
        return token, label
    tok = model._require_tokenizer()
    text = getattr(inp, "texts", [""])[0]
    spaced = answer if (not text or text[-1].isspace() or answer[:1].isspace()) else " " + answer
    ids = tok.encode(spaced, add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(
            f"the answer {answer!r} is {len(ids)} tokens {tok.convert_ids_to_tokens(ids)}, not one; "
            "pass a one-token answer or a token id"
        )
    return ids[0], answer


def input_groups(model, inp: Mapping) -> list[str]:
    if isinstance(inp, PreparedInput):
        return token_groups(inp)
    ids = inp["input_ids"]
    groups = ["template"] * ids.shape[1]
    for i in model.audio_token_mask(ids)[0].nonzero()[:, 0].tolist():
        groups[i] = "audio"
    groups[final_position(inp)] = "final"
    return groups


def _check_range(values: Sequence[int], n: int, what: str) -> list[int]:
    values = [int(v) for v in values]
    bad = [v for v in values if not 0 <= v < n]
    if bad:
        raise ValueError(f"{what} {bad} outside the valid range 0..{n - 1}")
    return values


def causal_trace(
    model,
    clean: Mapping,
    corrupted: Optional[Mapping] = None,
    *,
    answer: Union[int, str],
    corruption: str = "silence",
    mode: str = "tokens",
    states: str = "resid_post",
    layers: Optional[Sequence[int]] = None,
    positions: Optional[Sequence[int]] = None,
    window: int = 1,
    noise_scale: float = 3.0,
    n_samples: int = 10,
    seed: int = 0,
    snr_db: float = 0.0,
    swap_audio=None,
    engine: str = "fast",
    method: str = "exact",
    max_batch_tokens: Optional[int] = None,
) -> TraceResult:
    """Trace one item; see the module docstring. `positions` default to every
    non-audio position (the paper's text tokens); `layers` to all layers."""
    from lalm_lens.tracing.engines import ENGINES

    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {sorted(ENGINES)}, got {engine!r}")
    if method not in ("exact", "attribution"):
        raise ValueError(f"method must be 'exact' or 'attribution', got {method!r}")
    n_layers = model.cfg.n_layers
    get_act_name(states, 0)  # fails early on an unknown state name
    answer_id, answer_label = answer_token(model, clean, answer)
    groups = input_groups(model, clean)
    final = final_position(clean)
    layers = _check_range(range(n_layers) if layers is None else layers, n_layers, "layer(s)")
    positions = _check_range(non_audio_positions(groups) if positions is None else positions, len(groups), "position(s)")
    if window < 1:
        raise ValueError(f"window must be >= 1, got {window}")

    corr = corrupted if isinstance(corrupted, Corruption) else make_corruption(
        model, clean, corrupted, corruption, noise_scale=noise_scale, n_samples=n_samples, seed=seed,
        snr_db=snr_db, swap_audio=swap_audio,
    )
    check_same_layout(clean, corr.inputs)
    cells = build_cells(mode, layers, positions, window, n_layers)
    run = ENGINES[engine] if method == "exact" else ENGINES["attribution"]
    p_clean, p_corrupted, p_patched = run(
        model, clean, corr, states=states, cells=cells, answer=answer_id, final=final, max_batch_tokens=max_batch_tokens
    )
    p_patched = p_patched.double()
    if mode == "tokens":
        p_patched = p_patched.view(len(layers), len(positions))
    recovery = (p_patched - p_corrupted) / (p_clean - p_corrupted) if p_clean != p_corrupted else p_patched * float("nan")
    str_tokens = clean.str_tokens[0] if isinstance(clean, PreparedInput) else []
    return TraceResult(
        p_clean=p_clean,
        p_corrupted=float(p_corrupted),
        p_patched=p_patched,
        recovery=recovery,
        layers=layers,
        positions=positions,
        token_labels=[str_tokens[p] if str_tokens else str(p) for p in positions],
        groups=dict(enumerate(groups)),
        mode=mode,
        states=states,
        answer=answer_label,
        answer_token=answer_id,
        settings=dict(corruption=corr.description, corruption_kind=corruption,
                      window=window, noise_scale=noise_scale, n_samples=n_samples, seed=seed, snr_db=snr_db,
                      engine=engine, method=method),
        str_tokens=str_tokens,
        special_positions=special_positions(clean, model.tokenizer) if isinstance(clean, PreparedInput) else [],
    )
