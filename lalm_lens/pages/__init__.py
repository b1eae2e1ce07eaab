"""Interactive result pages: `result.to_html(path)` for every result kind, and `write_report(folder)`.

A page kind is one function `page(result, audio) -> Page`, registered with
`@page_for("<kind>")`; `write_page` picks it by the result's `page_kind`
(a trace's `kind`, else its class name). New result kinds (circuits, SAE
features) get a page by writing that one function.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Union

from lalm_lens.pages.builder import Audio, Page

PAGES: dict[str, Callable] = {}


def page_for(*kinds: str):
    """Register a page function for result kinds."""

    def register(fn):
        for kind in kinds:
            PAGES[kind] = fn
        return fn

    return register


def page_kind(result) -> str:
    kind = getattr(type(result), "kind", None)
    return kind if isinstance(kind, str) else type(result).__name__


def build_page(result, audio: Optional[Audio] = None) -> Page:
    _load_kinds()
    kind = page_kind(result)
    if kind not in PAGES:
        raise ValueError(f"no page for results of kind {kind!r} (pages exist for {sorted(PAGES)}); "
                         "register one with @lalm_lens.pages.page_for")
    return PAGES[kind](result, audio)


def write_page(result, path: Union[str, Path], audio: Optional[Audio] = None, js=None) -> Path:
    """The result's page at `path` (.html); `audio`: the clip it was traced on (a file or (wave, rate))."""
    return build_page(result, audio).write(path, js=js)


def _load_kinds() -> None:
    from lalm_lens.pages import circuits, dataset, features, heads, knockout, lens, time, trace  # noqa: F401  (they register)


class Viewable:
    """The hook every result class inherits: `to_html` delegates to the page of its kind."""

    def to_html(self, path: Union[str, Path], audio: Optional[Audio] = None, js=None) -> Path:
        """An interactive page of this result at `path`; `audio` (a file or (wave, rate)) adds the clip."""
        return write_page(self, path, audio=audio, js=js)
