"""The `lalm-lens` command."""

from __future__ import annotations

import argparse
import sys

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cmd_verify(args: argparse.Namespace) -> int:
    from lalm_lens.verification import verify

    report = verify(args.model, audio=args.audio, prompt=args.prompt, dtype=DTYPES.get(args.dtype), device=args.device)
    print(report)
    return 0 if report.passed else 1


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lalm-lens", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    v = sub.add_parser("verify", help="compare the hooked model with the original on one input")
    v.add_argument("model", help="hub id or local checkpoint folder")
    v.add_argument("--audio", help="audio file (default: a synthesized 3 s chirp)")
    v.add_argument("--prompt", default="Describe the audio.")
    v.add_argument("--dtype", choices=sorted(DTYPES), help="default: the checkpoint's own")
    v.add_argument("--device", help="default: cuda if available, else cpu")
    v.set_defaults(func=cmd_verify)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
