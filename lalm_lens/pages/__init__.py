"""Interactive result pages: `result.to_html(path)` for every result kind, and `write_report(folder)`.

A page is one function `page(result, audio) -> Page` per result kind (`Result.kind`,
`lalm_lens.result.KINDS`): the library's are listed in `BUILT_IN`; a kind
defined elsewhere registers its own with `@page_for("<kind>")`.
"""

from __future__ import annotations

import importlib
from pathlib import Path
from typing import Callable, Optional, Union

from lalm_lens.pages.builder import Audio, Page

BUILT_IN: dict[str, str] = {
    "layers": "lalm_lens.pages.trace:layer_page",
    "tokens": "lalm_lens.pages.trace:token_page",
    "audio_time": "lalm_lens.pages.time:time_page",
    "heads": "lalm_lens.pages.heads:heads_page",
    "experts": "lalm_lens.pages.heads:experts_page",
    "logit_lens": "lalm_lens.pages.lens:lens_page",
    "knockout": "lalm_lens.pages.knockout:knockout_page",
    "dataset": "lalm_lens.pages.dataset:dataset_page",
    "edge_scores": "lalm_lens.pages.circuits:edge_scores_page",
    "feature_activation": "lalm_lens.pages.features:activation_page",
    "feature_windows": "lalm_lens.pages.features:windows_page",
    "features": "lalm_lens.features.cells:feature_page",
}
"""The page of every result kind of the library -> `module:function`."""

PAGES: dict[str, Callable] = {}  # pages registered with `page_for` (kinds defined outside the library)


def page_for(*kinds: str):
    """Register a page function for result kinds defined outside the library."""

    def register(fn):
        for kind in kinds:
            PAGES[kind] = fn
        return fn

    return register


def page_kind(result) -> str:
    kind = getattr(type(result), "kind", None)
    return kind if isinstance(kind, str) and kind else type(result).__name__


def page_function(kind: str) -> Callable:
    """The page function of a result kind: registered with `page_for`, else the library's (`BUILT_IN`)."""
    if kind in PAGES:
        return PAGES[kind]
    if kind not in BUILT_IN:
        known = sorted(set(BUILT_IN) | set(PAGES))
        raise ValueError(f"no page for results of kind {kind!r} (pages exist for {known}); "
                         "register one with @lalm_lens.pages.page_for")
    module, name = BUILT_IN[kind].split(":")
    return getattr(importlib.import_module(module), name)


def build_page(result, audio: Optional[Audio] = None) -> Page:
    return page_function(page_kind(result))(result, audio)


def write_page(result, path: Union[str, Path], audio: Optional[Audio] = None, js=None) -> Path:
    """The result's page at `path` (.html); `audio`: the clip it was traced on (a file or (wave, rate))."""
    return build_page(result, audio).write(path, js=js)


class Viewable:
    """The hook every result class inherits: `to_html` delegates to the page of its kind."""

    def to_html(self, path: Union[str, Path], audio: Optional[Audio] = None, js=None) -> Path:
        """An interactive page of this result at `path`; `audio` (a file or (wave, rate)) adds the clip."""
        return write_page(self, path, audio=audio, js=js)
