"""Collect activations at one hook over a dataset of clips into a bounded on-disk store.

One item at a time (`model.prepare` per item, a tqdm bar): the hook's rows at
the chosen positions are appended to `.npy` shards in a folder whose total
size never passes `max_mb`. When the next item would not fit, collection stops
with a warning naming how many items made it in (and how to raise the bound);
a bound too small for even the first item is refused.

Positions: for a language-model hook ([batch, seq, d]) the token groups of
`lalm_lens.tracing.groups.token_groups` choose them — "audio" (the audio
vectors), "text" (every other position) or "all". A hook outside the LM (the
audio encoder's [batch, frames, d], `hook_audio_embeds`' [n_audio, d]) has only
audio rows: "audio" and "all" take them all, "text" is refused.
With `hook_out` (a transcoder's output hook) each row is the input hook's row
followed by the output hook's at the same position, `[d_in + d_out]`.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Iterable, Optional, Union

import numpy as np
import torch
from torch import Tensor

POSITIONS = ("audio", "text", "all")
DTYPES = {"float16": np.float16, "float32": np.float32}
META = "store.json"


class ActivationStore:
    """`.npy` shards (one per item) plus `store.json` (shapes, rows per item, the bound)."""

    def __init__(self, folder: Union[str, Path], max_mb: float, dtype: str = "float32"):
        if dtype not in DTYPES:
            raise ValueError(f"ActivationStore(dtype={dtype!r}): use one of {sorted(DTYPES)}")
        if not max_mb > 0:
            raise ValueError(f"ActivationStore(max_mb={max_mb}): the bound must be a positive number of MB")
        self.folder, self.max_mb, self.dtype = Path(folder), float(max_mb), dtype
        self.folder.mkdir(parents=True, exist_ok=True)
        old = sorted(self.folder.glob("shard_*.npy"))
        if old:
            raise ValueError(f"ActivationStore: {self.folder} already holds {len(old)} shard(s); use an empty folder")
        self.rows: list[int] = []
        self.bytes = 0
        self.widths: list[int] = []  # per hook: [d] or, for a transcoder's store, [d_in, d_out]

    @property
    def max_bytes(self) -> int:
        return int(self.max_mb * 2**20)

    def fits(self, n_rows: int, d: int) -> bool:
        return self.bytes + n_rows * d * np.dtype(DTYPES[self.dtype]).itemsize <= self.max_bytes

    def add(self, acts: Tensor) -> None:
        """Append one item's rows [n, d] as a shard (the caller checks `fits` first)."""
        arr = acts.detach().float().cpu().numpy().astype(DTYPES[self.dtype])
        np.save(self.folder / f"shard_{len(self.rows):06d}.npy", arr)
        self.rows.append(arr.shape[0])
        self.bytes += arr.nbytes
        self._write_meta(arr.shape[1])

    def _write_meta(self, d: int) -> None:
        meta = {"d": d, "dtype": self.dtype, "max_mb": self.max_mb, "bytes": self.bytes, "rows_per_item": self.rows}
        (self.folder / META).write_text(json.dumps(meta))

    def load(self, items: slice = slice(None)) -> Tensor:
        """The rows of the chosen items' shards, float32 [n, d]."""
        names = [self.folder / f"shard_{i:06d}.npy" for i in range(len(self.rows))][items]
        if not names:
            raise ValueError(f"ActivationStore.load({items}): no shards selected (the store has {len(self.rows)} items)")
        return torch.from_numpy(np.concatenate([np.load(n) for n in names]).astype(np.float32))


def check_positions(positions: str) -> str:
    if positions not in POSITIONS:
        raise ValueError(f"positions={positions!r} is not one of {POSITIONS}")
    return positions


def check_hook(model, hook: str) -> str:
    if hook not in model.hook_dict:
        near = [n for n in model.hook_dict if n.endswith(hook.rpartition(".")[2])][:3]
        raise ValueError(f"hook={hook!r} is not a hook point of this model (e.g. {near or list(model.hook_dict)[:3]}); "
                         "see model.hook_dict for the names")
    return hook


def item_rows(model, inp, act: Tensor, positions: str, hook: str) -> Tensor:
    """The rows [n, d] of one item's activation at the chosen positions."""
    from lalm_lens.tracing.groups import token_groups

    seq = model.model_inputs(inp)["input_ids"].shape[1]
    if act.dim() == 3 and act.shape[:2] == (1, seq):  # an LM hook: choose by token group
        groups = token_groups(inp)
        keep = [i for i, g in enumerate(groups) if positions == "all" or (g == "audio") == (positions == "audio")]
        return act[0, keep]
    if positions == "text":
        raise ValueError(f"positions='text': {hook} is outside the language model (shape {tuple(act.shape)}), "
                         "so it has audio rows only; use positions='audio' or 'all'")
    return act.reshape(-1, act.shape[-1])


@torch.no_grad()
def collect_activations(model, items: Iterable, hook: str, folder: Union[str, Path], positions: str = "audio",
                        max_mb: float = 512.0, dtype: str = "float32", progress: bool = True,
                        hook_out: Optional[str] = None) -> ActivationStore:
    """Run each item, keep `hook`'s rows at `positions` (beside `hook_out`'s), append them to a new store."""
    from tqdm.auto import tqdm

    from lalm_lens.tracing.dataset import as_items

    check_hook(model, hook)
    check_positions(positions)
    names = [hook] if hook_out is None else [hook, check_hook(model, hook_out)]
    items = as_items(items)
    if not items:
        raise ValueError("collect_activations(items=...): no items")
    store = ActivationStore(folder, max_mb, dtype)
    for n, item in enumerate(tqdm(items, desc=f"activations at {hook}", disable=not progress)):
        inp = model.prepare(item.audio, item.question, answer_prefix=item.answer_prefix, options=item.options)
        cache = model.run_with_cache(inp, names_filter=lambda n: n in names)[1]
        parts = [item_rows(model, inp, cache[n], positions, n) for n in names]
        if len({p.shape[0] for p in parts}) > 1:
            raise ValueError(f"transcoder hooks {hook} and {hook_out} have different positions "
                             f"({parts[0].shape[0]} and {parts[1].shape[0]} rows); pair hooks of one stream")
        rows = torch.cat(parts, -1)
        store.widths = [part.shape[-1] for part in parts]
        if not store.fits(*rows.shape):
            need = (store.bytes + rows.numel() * np.dtype(DTYPES[dtype]).itemsize) / 2**20
            if n == 0:
                raise ValueError(f"the activation store bound max_mb={max_mb} is too small for even one item "
                                 f"({need:.2f} MB); raise it")
            warnings.warn(f"activation store full ({store.bytes / 2**20:.2f} of {max_mb} MB): stopped after {n} of "
                          f"{len(items)} items; raise the bound to use them all")
            break
        store.add(rows)
    return store
