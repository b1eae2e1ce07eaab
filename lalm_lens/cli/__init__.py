"""The `lalm-lens` command: trace, trace-dataset, study, circuit, verify, demo-data.

Errors print one line (`lalm-lens: error: ...`, exit status 2); `--debug`
shows the traceback. Arguments, audio files, the items file and the output
folder are checked before a model is loaded.
"""

from __future__ import annotations

import argparse
import sys
import traceback
import warnings

from lalm_lens.cli.args import DTYPES, CLIError, add_family_options, load_options, prepare_options
from lalm_lens.cli import circuit as circuit_command
from lalm_lens.cli import features as features_command
from lalm_lens.cli import report as report_command
from lalm_lens.cli import study as study_command
from lalm_lens.cli import trace as trace_commands
from lalm_lens.cli import train_sae as train_sae_command


class Formatter(argparse.HelpFormatter):
    """Help that shows every default (unless the help text already says it, or it is an off switch)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text.lower() or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


def cmd_verify(args: argparse.Namespace) -> int:
    from lalm_lens.cli.args import check_audio_file
    from lalm_lens.verification import verify

    if args.audio:
        check_audio_file(args.audio, "--audio")
    report = verify(args.model, audio=args.audio, prompt=args.prompt, dtype=DTYPES.get(args.dtype), device=args.device,
                    prepare_kwargs=prepare_options(args), sequential=args.sequential, **load_options(args))
    print(report)
    return 0 if report.passed else 1


def cmd_demo_data(args: argparse.Namespace) -> int:
    from lalm_lens.cli.args import check_writable
    from lalm_lens.demo import write_demo_dataset

    if args.n < 1:
        raise CLIError(f"-n must be at least 1, got {args.n}")
    check_writable(args.out)
    path = write_demo_dataset(args.out, n=args.n, seed=args.seed, task=args.task)
    print(f"wrote {args.n} {args.task} items to {path}")
    return 0


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lalm-lens")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lalm-lens", description="Hooked audio LMs and causal tracing.",
                                     formatter_class=Formatter)
    parser.add_argument("--debug", action="store_true", help="show the full traceback of an error")
    parser.add_argument("--version", action="version", version=f"lalm-lens {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    trace_commands.add_parsers(sub, Formatter)
    study_command.add_parser(sub, Formatter)
    circuit_command.add_parser(sub, Formatter)
    report_command.add_parser(sub, Formatter)
    features_command.add_parser(sub, Formatter)
    train_sae_command.add_parser(sub, Formatter)

    v = sub.add_parser("verify", help="compare the hooked model with the original on one input", formatter_class=Formatter)
    v.add_argument("model", help="hub id or local checkpoint folder")
    v.add_argument("--audio", help="audio file (default: a synthesized 3 s chirp)")
    v.add_argument("--prompt", default="Describe the audio.", help="the user's text")
    v.add_argument("--dtype", choices=sorted(DTYPES), help="both models' dtype (default: the checkpoint's own)")
    v.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    add_family_options(v)
    add_family_options(v, "prepare_options")
    v.add_argument("--sequential", action="store_true",
                   help="run ours, keep only the compared states (on the CPU), free it, then load and run the "
                        "original: one model's memory at a time (for models whose two copies do not fit)")
    v.set_defaults(func=cmd_verify)

    g = sub.add_parser("demo-data", help="write held-out synthetic items for trace-dataset", formatter_class=Formatter)
    g.add_argument("--out", required=True, help="folder for items.jsonl and the clips")
    g.add_argument("-n", type=int, default=200, help="number of items")
    g.add_argument("--seed", type=int, default=1234, help="seed of the synthesized items")
    g.add_argument("--task", default="attributes", choices=["attributes", "letters"],
                   help="attributes: answered by the attribute word (model demo); letters: shuffled options "
                        "answered by letter (model demo-letters)")
    g.set_defaults(func=cmd_demo_data)
    return parser


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    print(f"lalm-lens: warning: {message}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning  # one line per warning, no quoted source line
            return args.func(args)
    except KeyboardInterrupt:
        print("lalm-lens: interrupted", file=sys.stderr)
        return 130
    except Exception as err:  # one line for the user; --debug for the traceback
        if args.debug:
            traceback.print_exc()
        message = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        usage = isinstance(err, CLIError)
        kind = "" if usage else f"{type(err).__name__}: "
        hint = "" if usage or args.debug else " (--debug for the traceback)"
        print(f"lalm-lens: error: {kind}{message}{hint}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
