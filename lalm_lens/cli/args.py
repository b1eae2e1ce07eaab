"""Argument groups shared by the commands, and what they build (corruption, metric, engine)."""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch

DEMOS = ("demo", "demo-letters")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class CLIError(Exception):
    """A usage error found before any work: printed as one line, exit status 2."""


def add_model_args(p: argparse.ArgumentParser, default_model=None) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--model", default=default_model, required=default_model is None,
                   help="hub id or checkpoint folder ('demo': the bundled demo model)")
    g.add_argument("--device", help="torch device (default: cuda if available, else cpu)")
    g.add_argument("--dtype", choices=sorted(DTYPES), help="weights' dtype (default: the checkpoint's own)")
    add_family_options(g)


def family_options(kind: str = "options") -> dict[str, tuple]:
    """Every family's extra keyword of one kind (`Family.options`: `from_pretrained`'s; `Family.prepare_options`:
    `prepare`'s): name -> (the option, the families taking it)."""
    from lalm_lens.families import REGISTRY

    options: dict[str, tuple] = {}
    for family in REGISTRY:
        for option in getattr(family, kind):
            options.setdefault(option.name, (option, []))[1].append(family.name)
    return options


def add_family_options(g, kind: str = "options") -> None:
    """One flag per family option, its help naming the families that take it."""
    for option, families in family_options(kind).values():
        g.add_argument(option.flag, help=f"{', '.join(families)}: {option.help}")


def load_options(args: argparse.Namespace) -> dict:
    """The family options given on the command line, as `from_pretrained` keywords."""
    return {name: getattr(args, name) for name in family_options() if getattr(args, name, None)}


def prepare_options(args: argparse.Namespace) -> dict:
    """The family `prepare` options given on the command line (a blank value too: DeSTA's `--transcript " "`)."""
    return {name: getattr(args, name) for name in family_options("prepare_options")
            if getattr(args, name, None) is not None}


def add_trace_args(p: argparse.ArgumentParser, default_mode: str) -> None:
    modes = ["tokens", "layers"] + (["both"] if default_mode == "both" else [])
    g = p.add_argument_group("tracing")
    g.add_argument("--mode", default=default_mode, choices=modes,
                   help="tokens: one position per cell (layer x position); layers: all text positions at each layer")
    g.add_argument("--corruption", default="silence", choices=["silence", "noise", "snr", "swap"],
                   help="silence of the same length; noise: Gaussian noise on the audio vectors (ROME); "
                        "snr: white noise on the waveform; swap: another clip (--swap-audio)")
    g.add_argument("--noise-scale", type=float, default=3.0, help="noise: multiple of the audio vectors' std")
    g.add_argument("--n-samples", type=int, default=10, help="noise: seeded draws whose scores are averaged")
    g.add_argument("--snr-db", type=float, default=0.0, help="snr: signal-to-noise ratio in dB")
    g.add_argument("--swap-audio", help="swap: the other clip (a file)")
    g.add_argument("--seed", type=int, default=0, help="seed of the noise (and of the demo clip)")
    g.add_argument("--states", default="resid_post",
                   help="block state restored: resid_pre, resid_mid, resid_post, attn_out, mlp_out, q, k, v, z, ...")
    g.add_argument("--window", type=int, default=1, help="layers restored around each layer (ROME: 10 for attn/mlp)")
    g.add_argument("--metric", default="answer_prob", choices=["answer_prob", "logit_diff", "option_prob"],
                   help="answer_prob: P(answer); logit_diff: logit(answer) - logit(foil); "
                        "option_prob: P(answer) renormalised over the options")
    g.add_argument("--foil", nargs="+", help="logit_diff: the foil token(s) (default: the other options)")
    g.add_argument("--min-effect", type=float,
                   help="smallest m(clean) - m(corrupted) of a well-posed trace (default: 0.1 for probabilities, "
                        "1.0 for logit_diff)")
    g.add_argument("--engine", default="fast", choices=["fast", "reference", "attribution"],
                   help="fast: exact, re-runs only what a patch changes; reference: one forward per cell; "
                        "attribution: gradient estimate")
    g.add_argument("--out", default="lalm-lens-out", help="output folder")


def corruption_of(args: argparse.Namespace):
    from lalm_lens.tracing import GaussianNoise, Silence, Swap, WhiteNoise

    if args.corruption == "noise":
        return GaussianNoise(scale=args.noise_scale, n_samples=args.n_samples, seed=args.seed)
    if args.corruption == "snr":
        return WhiteNoise(snr_db=args.snr_db, seed=args.seed)
    if args.corruption == "swap":
        if not args.swap_audio:
            raise CLIError("--corruption swap needs --swap-audio FILE")
        return Swap(args.swap_audio)
    return Silence()


def metric_of(args: argparse.Namespace):
    from lalm_lens.tracing import answer_prob, logit_diff, option_prob

    if args.foil and args.metric != "logit_diff":
        raise CLIError("--foil applies to --metric logit_diff only")
    if args.metric == "logit_diff":
        return logit_diff(foil=args.foil)
    return option_prob() if args.metric == "option_prob" else answer_prob


def nearest(value: str, choices) -> str:
    """` (did you mean 'x'?)` for a close choice, else empty."""
    import difflib

    close = difflib.get_close_matches(str(value), list(choices), n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def check_model_name(model: str) -> None:
    """`--model` is a bundled demo, a folder here, or a hub id (owner/name): a typo is named before any work."""
    if model in DEMOS or Path(model).exists() or "/" in model:
        return
    raise CLIError(f"--model {model}: no model {model!r} (not a bundled demo, not a folder here, not a hub id "
                   f"owner/name){nearest(model, DEMOS)}")


def check_trace_args(args: argparse.Namespace) -> None:
    """The flags that would otherwise fail only after the model has loaded."""
    from lalm_lens.tracing.cells import POSITIONAL_STATES

    if args.states not in POSITIONAL_STATES:
        raise CLIError(f"--states {args.states}: not a restorable block state{nearest(args.states, POSITIONAL_STATES)};"
                       f" choose from {', '.join(POSITIONAL_STATES)}")
    if args.window < 1:
        raise CLIError(f"--window must be at least 1 (1: only the layer itself), got {args.window}")
    if getattr(args, "window_seconds", 1.0) <= 0:
        raise CLIError(f"--window-seconds must be a positive number of seconds, got {args.window_seconds}")


def trace_settings(args: argparse.Namespace) -> dict:
    check_trace_args(args)
    return dict(corruption=corruption_of(args), metric=metric_of(args), states=args.states, window=args.window,
                engine=args.engine, min_effect=args.min_effect)


def check_audio_file(path: str, flag: str) -> None:
    """A readable audio file, checked before the model loads."""
    import soundfile

    if not Path(path).is_file():
        raise CLIError(f"{flag} {path}: no such file")
    try:
        soundfile.info(path)
    except Exception as err:  # libsndfile's error for anything that is not audio
        raise CLIError(f"{flag} {path}: not a readable audio file ({str(err).splitlines()[0]})") from None


def check_writable(folder: str) -> Path:
    """Create the output folder and prove it writable before any work."""
    out = Path(folder)
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".lalm-lens-probe")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise CLIError(f"--out {folder}: cannot write there ({err.strerror or err})") from None
    return out


def load_model(args: argparse.Namespace):
    from lalm_lens import HookedLALM

    return HookedLALM.from_pretrained(args.model, device=args.device, dtype=DTYPES.get(args.dtype), **load_options(args))
