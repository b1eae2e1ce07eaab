"""Read and write the SAE formats researchers share, without their libraries.

SAELens: a folder with `cfg.json` and `sae_weights.safetensors` (keys `W_enc`
[d_in, d_sae], `b_enc`, `W_dec` [d_sae, d_in], `b_dec`, and `threshold` for
JumpReLU). The config names the activation by `architecture` ("standard",
"jumprelu", "topk"; v6) or `activation_fn_str` / `activation_fn_kwargs` (v5),
the hook by `metadata.hook_name` (v6) or `hook_name` (v5), and a transcoder's
output by `hook_name_out` / `d_out`.

EleutherAI sparsify: one folder per hook point with `cfg.json` (its
`SparseCoderConfig` fields plus `d_in`) and `sae.safetensors` (`encoder.weight`
[num_latents, d_in], `encoder.bias`, `W_dec` [num_latents, d_in], `b_dec`,
optional `W_skip`); always TopK over ReLU, centred by `b_dec` unless `transcode`.
sparsify's transcoder maps a module's input to its output, so its config names
no output hook; ours adds `hook_name_out` to `cfg.json` (sparsify's reader
drops fields it does not know), and a transcoder folder without it loads as
an SAE reading and writing one hook.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional, Union

import torch
from safetensors.torch import load_file, save_file

from lalm_lens.features.sae import SAE, SAEConfig

SAELENS_WEIGHTS, SPARSIFY_WEIGHTS, CFG = "sae_weights.safetensors", "sae.safetensors", "cfg.json"
SAELENS_ARCH = {"standard": "relu", "relu": "relu", "jumprelu": "jumprelu", "topk": "topk"}
SPARSIFY_MAP = {"W_enc": ("encoder.weight", True), "b_enc": ("encoder.bias", False), "W_dec": ("W_dec", False),
                "b_dec": ("b_dec", False), "W_skip": ("W_skip", False)}  # ours: (theirs, transposed)


def load_sae(path: Union[str, Path], hook_name: Optional[str] = None) -> SAE:
    """An SAE from a SAELens or sparsify folder (told apart by the weights file)."""
    path = Path(path)
    if (path / SAELENS_WEIGHTS).exists():
        return load_saelens(path, hook_name)
    if (path / SPARSIFY_WEIGHTS).exists():
        return load_sparsify(path, hook_name)
    raise FileNotFoundError(f"load_sae: {path} has neither {SAELENS_WEIGHTS} (SAELens) nor {SPARSIFY_WEIGHTS} "
                            "(sparsify); for sparsify, pass the folder of one hook point")


def _read_cfg(path: Path) -> dict:
    if not (path / CFG).exists():
        raise FileNotFoundError(f"{path / CFG} is missing: an SAE folder needs its config next to the weights")
    return json.loads((path / CFG).read_text())


def load_saelens(path: Union[str, Path], hook_name: Optional[str] = None) -> SAE:
    path = Path(path)
    raw = _read_cfg(path)
    meta = raw.get("metadata") or {}
    arch = raw.get("architecture") or raw.get("activation_fn_str") or "standard"
    if arch == "relu" and raw.get("architecture") == "jumprelu":
        arch = "jumprelu"
    if arch not in SAELENS_ARCH:
        raise ValueError(f"{path / CFG}: architecture {arch!r} is not supported; use one of {sorted(SAELENS_ARCH)}")
    norm = raw.get("normalize_activations", "none") or "none"
    if norm != "none":
        raise ValueError(f"{path / CFG}: normalize_activations={norm!r} is not supported (only 'none'); "
                         "fold the scaling into the weights first")
    k = raw.get("k", (raw.get("activation_fn_kwargs") or {}).get("k"))
    cfg = SAEConfig(
        d_in=int(raw["d_in"]), d_sae=int(raw["d_sae"]), activation=SAELENS_ARCH[arch],
        k=int(k) if k is not None else None, apply_b_dec_to_input=bool(raw.get("apply_b_dec_to_input", True)),
        hook_name=hook_name or meta.get("hook_name") or raw.get("hook_name"),
        hook_name_out=meta.get("hook_name_out") or raw.get("hook_name_out"), d_out=raw.get("d_out"),
    )
    return _with_weights(SAE(cfg), load_file(str(path / SAELENS_WEIGHTS)), path)


def save_saelens(sae: SAE, path: Union[str, Path]) -> Path:
    """Write `cfg.json` (SAELens v6 fields) and `sae_weights.safetensors`."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if sae.W_skip is not None:
        raise ValueError("save_saelens: SAELens has no W_skip; save this skip transcoder with save_sparsify")
    c = sae.cfg
    arch = {"relu": "standard"}.get(c.activation, c.activation)
    raw = {"architecture": arch, "d_in": c.d_in, "d_sae": c.d_sae, "dtype": str(sae.W_enc.dtype).replace("torch.", ""),
           "device": "cpu", "apply_b_dec_to_input": c.apply_b_dec_to_input, "normalize_activations": "none",
           "metadata": {"hook_name": c.hook_name, **({"hook_name_out": c.hook_name_out} if c.is_transcoder else {})}}
    if c.k is not None:
        raw["k"] = c.k
    if c.d_out is not None:
        raw["d_out"] = c.d_out
    tensors = {n: p.detach().contiguous() for n, p in sae.named_parameters()}
    save_file(tensors, str(path / SAELENS_WEIGHTS))
    (path / CFG).write_text(json.dumps(raw, indent=2))
    return path


def load_sparsify(path: Union[str, Path], hook_name: Optional[str] = None) -> SAE:
    path = Path(path)
    raw = _read_cfg(path)
    if raw.get("activation", "topk") != "topk":
        raise ValueError(f"{path / CFG}: activation={raw['activation']!r} is not supported; sparsify SAEs here are TopK")
    weights = load_file(str(path / SPARSIFY_WEIGHTS))
    d_in, n = int(raw["d_in"]), int(raw.get("num_latents") or weights["encoder.weight"].shape[0])
    transcode = bool(raw.get("transcode", False))
    cfg = SAEConfig(d_in=d_in, d_sae=n, activation="topk", k=int(raw["k"]), apply_b_dec_to_input=not transcode,
                    hook_name=hook_name or path.name, d_out=weights["W_dec"].shape[1] if transcode else None,
                    hook_name_out=raw.get("hook_name_out") if transcode else None,
                    skip_connection="W_skip" in weights)
    ours = {k: (weights[t].T if transposed else weights[t]) for k, (t, transposed) in SPARSIFY_MAP.items() if t in weights}
    return _with_weights(SAE(cfg), ours, path)


def save_sparsify(sae: SAE, path: Union[str, Path]) -> Path:
    """Write one hook point's folder: `cfg.json` and `sae.safetensors` (TopK SAEs only)."""
    c = sae.cfg
    if c.activation != "topk":
        raise ValueError(f"save_sparsify: sparsify stores TopK SAEs; this one is {c.activation!r} (use save_saelens)")
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    raw = {"activation": "topk", "expansion_factor": max(1, c.d_sae // c.d_in), "normalize_decoder": True,
           "num_latents": c.d_sae, "k": c.k, "multi_topk": False, "skip_connection": c.skip_connection,
           "transcode": not c.apply_b_dec_to_input,  # sparsify centres exactly when not transcoding
           "d_in": c.d_in, **({"hook_name_out": c.hook_name_out} if c.is_transcoder else {})}
    params = dict(sae.named_parameters())
    tensors = {t: (params[k].T if transposed else params[k]).detach().contiguous()
               for k, (t, transposed) in SPARSIFY_MAP.items() if k in params}
    save_file(tensors, str(path / SPARSIFY_WEIGHTS))
    (path / CFG).write_text(json.dumps(raw, indent=2))
    return path


def _with_weights(sae: SAE, tensors: dict[str, torch.Tensor], path: Path) -> SAE:
    expected = dict(sae.named_parameters())
    missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or extra:
        raise ValueError(f"{path}: weights do not match the config (missing {missing}, unexpected {extra})")
    with torch.no_grad():
        for name, p in expected.items():
            if tuple(tensors[name].shape) != tuple(p.shape):
                raise ValueError(f"{path}: {name} has shape {tuple(tensors[name].shape)}, the config says {tuple(p.shape)}")
            p.copy_(tensors[name].to(p.dtype))
    return sae
