"""Content hashes: what makes a resumed record, or a swapped clip, the same as before across processes.

- `audio_sha1(audio)`: the SHA-1 of an audio file's bytes (cached by path, size and
  modification time, so a dataset resume hashes each file once), or of an array's samples;
- `item_fingerprint(...)`: the hash of everything an item's trace depends on — its audio's
  content, question, options, answer and answer prefix — stored in its record, so that a
  resumed run redoes the items whose content changed instead of keeping stale records.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

_FILE_HASHES: dict[tuple[str, int, int], str] = {}  # (resolved path, size, mtime_ns) -> sha1


def file_sha1(path: str | os.PathLike) -> str:
    """The SHA-1 of a file's bytes; cached while its size and modification time are unchanged."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError:
        raise FileNotFoundError(f"audio file not found: {path}") from None
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _FILE_HASHES:
        digest = hashlib.sha1()
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        _FILE_HASHES[key] = digest.hexdigest()
    return _FILE_HASHES[key]


def audio_sha1(audio: Any) -> str:
    """The SHA-1 of a clip's content: a file's bytes (path or `PathLike`), or an array's float32 samples."""
    if isinstance(audio, (str, os.PathLike)):
        return file_sha1(audio)
    if isinstance(audio, torch.Tensor):
        audio = audio.detach().cpu().float().numpy()
    data = np.asarray(audio)
    if data.dtype == object:
        raise TypeError(f"cannot hash audio of type {type(audio).__name__}: pass a file path or an array of samples")
    return hashlib.sha1(np.ascontiguousarray(data, dtype=np.float32).tobytes()).hexdigest()


def item_fingerprint(audio: Any, question: Any, options: Any, answer: Any, answer_prefix: Any) -> str:
    """The hash of an item's content (its audio's bytes, not its path; an unreadable clip hashes as such,
    and its trace records the error)."""
    try:
        sound = audio_sha1(audio)
    except (OSError, TypeError):
        sound = f"unreadable:{audio}"
    fields = dict(audio=sound, question=question, options=options, answer=answer,
                  answer_prefix=answer_prefix)
    return hashlib.sha1(json.dumps(fields, sort_keys=True, default=str).encode()).hexdigest()
