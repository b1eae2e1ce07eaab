"""Train a TopK SAE on a model's activations at one hook, with EleutherAI sparsify's `SparseCoder`.

sparsify's `Trainer` cannot take our activations: it feeds `batch["input_ids"]`
alone to a `PreTrainedModel`'s `base_model` and hooks its modules, so there is
no place for the audio features that `model.prepare` builds, nor for choosing
audio or text positions (its only mask is a list of excluded token ids). Its
`SparseCoder` is what we use: the TopK encoder (with its fused backward), the
FVU loss, unit-norm decoder rows and the removal of the gradient parallel to
them, and `save_to_disk` (its own on-disk format). The glue here is the loop:
activations from our store (`store.py`), `b_dec` started at their mean, Adam
over seeded minibatches. The result is read back with `formats.load_sparsify`
into our `SAE`, which is then measured on held-out items (`evaluate.py`).

Transcoders are sparsify's too (`SparseCoderConfig(transcode=True)`: no input
centring, a zero-initialised decoder, the FVU taken against the output `y`,
no decoder normalisation); we start the biases as its trainer does (`b_dec` at
the output mean, the encoder bias centring the input). Its coder decodes into
`d_in` (its `W_dec` is `[num_latents, d_in]`), so both hooks must have one width,
and its `cfg.json` names no output hook, so `as_sae` adds `hook_name_out`.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Optional, Union

import torch
from torch import Tensor

from lalm_lens.features.formats import load_sparsify
from lalm_lens.features.sae import SAE


def _sparsify():
    try:
        if not torch.cuda.is_available():  # its Triton sparse decoder is GPU-only
            os.environ.setdefault("SPARSIFY_DISABLE_TRITON", "1")
        from sparsify import SparseCoder, SparseCoderConfig, sparse_coder, utils
    except ImportError as err:
        raise ImportError("training SAEs needs EleutherAI's sparsify: pip install -e '.[sae]' "
                          "(or pip install eai-sparsify)") from err
    if not torch.cuda.is_available():  # also when sparsify was imported before the variable was set
        sparse_coder.decoder_impl = utils.eager_decode
    return SparseCoder, SparseCoderConfig


def new_coder(d_in: int, d_sae: int, k: int, seed: int, mean: Tensor, mean_in: Optional[Tensor] = None):
    """A fresh sparsify SparseCoder (seeded) with `b_dec` at the data mean; with `mean_in` (the input
    mean) a transcoder, whose `b_dec` is the output mean and whose encoder bias centres the input."""
    SparseCoder, SparseCoderConfig = _sparsify()
    if not 0 < k <= d_sae:
        raise ValueError(f"k={k} must be in 1..d_sae={d_sae}")
    if mean_in is not None and mean_in.shape != mean.shape:
        raise ValueError(f"sparsify's transcoder decodes into its input width: the input hook has width "
                         f"{mean_in.shape[-1]}, the output hook {mean.shape[-1]}; pair hooks of one width "
                         "(e.g. blocks.L.ln2.hook_normalized -> blocks.L.hook_mlp_out)")
    torch.manual_seed(seed)
    cfg = SparseCoderConfig(num_latents=d_sae, k=k, transcode=mean_in is not None)
    coder = SparseCoder(d_in, cfg, device="cpu", dtype=torch.float32)
    with torch.no_grad():
        coder.b_dec.copy_(mean)
        if mean_in is not None:
            coder.encoder.bias.copy_(-mean_in @ coder.encoder.weight.T)
    return coder


def fit_coder(coder, x: Tensor, steps: int, batch_size: int = 256, lr: Optional[float] = None, seed: int = 0,
              device: Optional[str] = None, progress: bool = True, y: Optional[Tensor] = None):
    """`steps` Adam steps on seeded minibatches of the rows `x` [n, d_in], minimising FVU (of the
    targets `y` [n, d_in] for a transcoder)."""
    from tqdm.auto import tqdm

    if steps < 1:
        raise ValueError(f"steps={steps} must be at least 1")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    coder.to(device)
    lr = lr or 2e-4 / (coder.num_latents / 2**14) ** 0.5  # sparsify's default for Adam
    opt = torch.optim.Adam(coder.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    unit = not coder.cfg.transcode  # sparsify keeps unit-norm decoder rows for autoencoders only
    for _ in tqdm(range(steps), desc="training " + ("transcoder" if coder.cfg.transcode else "SAE"),
                  disable=not progress):
        rows = torch.randint(len(x), (min(batch_size, len(x)),), generator=gen)
        if unit:
            coder.set_decoder_norm_to_unit_norm()
        out = coder(x[rows].to(device), None if y is None else y[rows].to(device))
        out.fvu.backward()
        if unit:
            coder.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
    if unit:
        coder.set_decoder_norm_to_unit_norm()
    return coder.cpu()


def as_sae(coder, folder: Union[str, Path], hook: str, hook_out: Optional[str] = None) -> SAE:
    """Save with sparsify's own `save_to_disk` and read it back as our `SAE` (spliceable at `hook`; a
    transcoder writing at `hook_out`, which is added to sparsify's `cfg.json`)."""
    coder.save_to_disk(folder)
    if hook_out is not None:
        cfg = Path(folder) / "cfg.json"
        cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "hook_name_out": hook_out}))
    return load_sparsify(folder, hook_name=hook)
