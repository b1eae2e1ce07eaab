"""`lalm-lens report OUT_DIR`: a page for every result in a folder and an `index.html`; `--no-html` for the
commands that write figures (they write each result's page beside its figure by default)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Optional


def add_parser(sub, formatter) -> None:
    r = sub.add_parser("report", help="interactive pages for every result under a folder, linked from index.html",
                       formatter_class=formatter)
    r.add_argument("out_dir", metavar="OUT_DIR", help="a folder of results (an --out folder, a study's out folder)")
    r.set_defaults(func=cmd_report)


def add_html_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--no-html", action="store_true", help="do not write the interactive page beside each figure")


def clip_of(args: argparse.Namespace, out: Path) -> Optional[Path]:
    """The clip a page plays: `--audio`, else the demo clip written into `out`."""
    if getattr(args, "audio", None):
        return Path(args.audio)
    demo = out / "demo_clip.wav"
    return demo if demo.is_file() else None


def cmd_report(args: argparse.Namespace) -> int:
    from lalm_lens.cli.args import CLIError
    from lalm_lens.pages.report import write_report

    if not Path(args.out_dir).is_dir():
        raise CLIError(f"OUT_DIR {args.out_dir}: no such folder")
    index = write_report(args.out_dir)
    print(f"wrote {index}")
    return 0
