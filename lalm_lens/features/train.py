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
"""

from __future__ import annotations

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


def new_coder(d_in: int, d_sae: int, k: int, seed: int, mean: Tensor):
    """A fresh sparsify SparseCoder (seeded) with `b_dec` at the data mean."""
    SparseCoder, SparseCoderConfig = _sparsify()
    if not 0 < k <= d_sae:
        raise ValueError(f"k={k} must be in 1..d_sae={d_sae}")
    torch.manual_seed(seed)
    coder = SparseCoder(d_in, SparseCoderConfig(num_latents=d_sae, k=k), device="cpu", dtype=torch.float32)
    with torch.no_grad():
        coder.b_dec.copy_(mean)
    return coder


def fit_coder(coder, x: Tensor, steps: int, batch_size: int = 256, lr: Optional[float] = None, seed: int = 0,
              device: Optional[str] = None, progress: bool = True):
    """`steps` Adam steps on seeded minibatches of the rows `x` [n, d_in], minimising FVU."""
    from tqdm.auto import tqdm

    if steps < 1:
        raise ValueError(f"steps={steps} must be at least 1")
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    coder.to(device)
    lr = lr or 2e-4 / (coder.num_latents / 2**14) ** 0.5  # sparsify's default for Adam
    opt = torch.optim.Adam(coder.parameters(), lr=lr)
    gen = torch.Generator().manual_seed(seed)
    for _ in tqdm(range(steps), desc="training SAE", disable=not progress):
        batch = x[torch.randint(len(x), (min(batch_size, len(x)),), generator=gen)].to(device)
        coder.set_decoder_norm_to_unit_norm()
        out = coder(batch)
        out.fvu.backward()
        coder.remove_gradient_parallel_to_decoder_directions()
        opt.step()
        opt.zero_grad()
    coder.set_decoder_norm_to_unit_norm()
    return coder.cpu()


def as_sae(coder, folder: Union[str, Path], hook: str) -> SAE:
    """Save with sparsify's own `save_to_disk` and read it back as our `SAE` (spliceable at `hook`)."""
    coder.save_to_disk(folder)
    return load_sparsify(folder, hook_name=hook)
