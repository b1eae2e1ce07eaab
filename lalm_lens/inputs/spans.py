"""Locate named pieces of a prompt (the question, the option list, the answer prefix) as token ranges."""

from __future__ import annotations

import re
from typing import Optional, Sequence


def text_spans(
    text: str, prompt: Optional[str], options: Optional[Sequence[str]], answer_prefix: Optional[str], start: int = 0
) -> dict[str, tuple[int, int]]:
    """Character ranges of `prompt`, of the option list inside it, and of `answer_prefix` at the end."""
    spans: dict[str, tuple[int, int]] = {}
    if prompt:
        begin = text.find(prompt, start)
        if begin < 0:
            raise ValueError("the prompt text does not occur in the rendered input")
        spans["prompt"] = (begin, begin + len(prompt))
        if options:
            spans["options"] = option_span(text, spans["prompt"], options)
    elif options:
        raise ValueError("options were given without a prompt to find them in")
    if answer_prefix:
        if not text.endswith(answer_prefix):
            raise ValueError("the rendered input does not end with the answer prefix")
        spans["answer_prefix"] = (len(text) - len(answer_prefix), len(text))
    return spans


def option_span(text: str, within: tuple[int, int], options: Sequence[str]) -> tuple[int, int]:
    """From the first to the last option in `text[within]`: each option's last whole-word,
    case-insensitive occurrence (the option list normally closes the question)."""
    lo, hi = within
    region = text[lo:hi]
    starts, ends = [], []
    for option in options:
        found = list(re.finditer(rf"(?<!\w){re.escape(option)}(?!\w)", region, flags=re.IGNORECASE))
        if not found:
            raise ValueError(f"option {option!r} does not occur in the prompt {region!r}")
        starts.append(found[-1].start())
        ends.append(found[-1].end())
    return lo + min(starts), lo + max(ends)


def token_ranges(offsets: Sequence[tuple[int, int]], spans: dict[str, tuple[int, int]]) -> dict[str, tuple[int, int]]:
    """Map character ranges to `(first, stop)` token ranges (tokens overlapping the range)."""
    out = {}
    for name, (c0, c1) in spans.items():
        hits = [i for i, (t0, t1) in enumerate(offsets) if t1 > c0 and t0 < c1 and t1 > t0]
        if not hits:
            raise ValueError(f"no token covers the {name} text")
        out[name] = (hits[0], hits[-1] + 1)
    return out


def latin(text: Optional[str]) -> Optional[str]:
    """UTF-8 bytes read as Latin-1 (one character per byte), to search byte-level token text."""
    return text.encode("utf-8").decode("latin-1") if text else text


def byte_offsets(pieces: Sequence[bytes]) -> tuple[str, list[tuple[int, int]]]:
    """The concatenated bytes of `pieces` as Latin-1 text, and each piece's `(start, stop)` in it."""
    offsets, at = [], 0
    for piece in pieces:
        offsets.append((at, at + len(piece)))
        at += len(piece)
    return b"".join(pieces).decode("latin-1"), offsets
