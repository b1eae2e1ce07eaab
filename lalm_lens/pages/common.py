"""Pieces shared by the trace pages: the header text, token names and audio timing of positions."""

from __future__ import annotations

from typing import Optional

from lalm_lens.pages.builder import Audio, Page


def trace_page(result, audio: Optional[Audio], what: str) -> Page:
    """A page titled by the trace, with its header/summary text (flagged when ill-posed) and the clip."""
    page = Page(result.title(what).replace("\n", " — "))
    page.text(result.summary())
    if result.ill_posed:
        page.text("WARNING " + result.checks.describe(), warn=True)
    page.audio(audio)
    return page


def position_times(result) -> dict[int, list[float]]:
    """`{position: [start, end]}` seconds of each audio position, from the trace's first and last audio token
    times (audio tokens are evenly spaced in every family that has timing); empty without timing."""
    seconds = result.settings.get("audio_seconds")
    audio = sorted(p for p, g in result.groups.items() if g == "audio")
    if not seconds or not audio:
        return {}
    first, last = seconds
    step = (last - first) / (len(audio) - 1) if len(audio) > 1 else (result.settings.get("duration") or 0.0)
    return {p: [first + k * step, first + (k + 1) * step] for k, p in enumerate(audio)}


def token_text(result, position: int) -> str:
    return result.str_tokens[position] if result.str_tokens and position < len(result.str_tokens) else str(position)
