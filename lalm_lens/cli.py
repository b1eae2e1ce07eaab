"""The `lalm-lens` command: trace, trace-dataset, verify (and the demo's helpers)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def load_model(args: argparse.Namespace):
    from lalm_lens import HookedLALM

    load = {k: v for k, v in (("encoder_path", args.encoder_path), ("llm_path", args.llm_path)) if v}
    return HookedLALM.from_pretrained(args.model, device=args.device, dtype=DTYPES.get(args.dtype), **load)


def trace_settings(args: argparse.Namespace) -> dict:
    return dict(corruption=args.corruption, states=args.states, window=args.window, engine=args.engine,
                noise_scale=args.noise_scale, n_samples=args.n_samples, seed=args.seed, snr_db=args.snr_db,
                swap_audio=args.swap_audio)


def cmd_trace(args: argparse.Namespace) -> int:
    from lalm_lens.tracing import causal_trace, plots

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(args)
    audio, prompt, answer, options, prefix = args.audio, args.prompt, args.answer, args.options, args.answer_prefix
    if args.model == "demo" and audio is None:
        from lalm_lens.demo import demo_example

        audio, prompt, answer, options, prefix = demo_example(out / "demo_clip.wav", seed=args.seed)
        print(f"demo clip: {out / 'demo_clip.wav'}\nprompt: {prompt}\nanswer prefix: {prefix!r}; expected answer: {answer!r}")
    missing = [name for name, v in (("--audio", audio), ("--prompt", prompt), ("--answer", answer)) if v is None]
    if missing:
        print(f"lalm-lens trace: {', '.join(missing)} required with --model {args.model}", file=sys.stderr)
        return 2
    extra = {"transcript": args.transcript} if args.transcript is not None else {}
    inp = model.prepare(audio, prompt, answer_prefix=prefix, options=options, **extra)
    modes = ["tokens", "layers"] if args.mode == "both" else [args.mode]
    summary = {}
    for mode in modes:
        result = causal_trace(model, inp, answer=answer, mode=mode, **trace_settings(args))
        result.save(out / f"trace_{mode}.json")
        result.save(out / f"trace_{mode}.npz")
        figure = out / ("heatmap_tokens.png" if mode == "tokens" else "recovery_layers.png")
        plots.save(result.plot(), figure)
        print(f"\n[{mode}] {result.summary()}\n  wrote {out / f'trace_{mode}.json'} and {figure}")
        summary[mode] = result.summary()
    (out / "summary.json").write_text(json.dumps(dict(model=args.model, prompt=prompt, answer=answer, **summary), indent=1))
    return 0


def cmd_trace_dataset(args: argparse.Namespace) -> int:
    from lalm_lens.tracing import plots, trace_dataset

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model = load_model(args)
    result = trace_dataset(model, args.items, out=out / "records.jsonl", mode=args.mode, limit=args.limit,
                           filter=None if args.no_filter else "top1", **trace_settings(args))
    result.save(out / "summary.json")
    if result.kept:
        plots.save(result.plot(), out / f"recovery_{args.mode}.png")
    print(result.summary())
    print(f"wrote {out / 'records.jsonl'}, {out / 'summary.json'}" + (f", {out / f'recovery_{args.mode}.png'}" if result.kept else ""))
    return 0


def cmd_verify(args: argparse.Namespace) -> int:
    from lalm_lens.verification import verify

    load = {k: v for k, v in (("encoder_path", args.encoder_path), ("llm_path", args.llm_path)) if v}
    prepare = {"transcript": args.transcript} if args.transcript is not None else {}
    report = verify(args.model, audio=args.audio, prompt=args.prompt, dtype=DTYPES.get(args.dtype), device=args.device,
                    prepare_kwargs=prepare, **load)
    print(report)
    return 0 if report.passed else 1


def cmd_demo_data(args: argparse.Namespace) -> int:
    from lalm_lens.demo import write_demo_dataset

    path = write_demo_dataset(args.out, n=args.n, seed=args.seed)
    print(f"wrote {args.n} items to {path}")
    return 0


def add_model_args(p: argparse.ArgumentParser, default_model=None) -> None:
    p.add_argument("--model", default=default_model, required=default_model is None,
                   help="hub id or checkpoint folder" + (" (default: the bundled demo model)" if default_model else ""))
    p.add_argument("--device", help="default: cuda if available, else cpu")
    p.add_argument("--dtype", choices=sorted(DTYPES), help="default: the checkpoint's own")
    p.add_argument("--encoder-path", help="DeSTA: a local Whisper folder instead of the config's encoder id")
    p.add_argument("--llm-path", help="DeSTA: a local LM folder instead of the config's LM id")


def add_trace_args(p: argparse.ArgumentParser, default_mode: str) -> None:
    p.add_argument("--mode", default=default_mode, choices=["tokens", "layers"] + (["both"] if default_mode == "both" else []))
    p.add_argument("--corruption", default="silence", choices=["silence", "noise", "snr", "swap"])
    p.add_argument("--states", default="resid_post", help="block state restored: resid_pre, resid_post, attn_out, mlp_out, ...")
    p.add_argument("--window", type=int, default=1, help="layers restored around each layer (ROME uses 10 for attn/mlp)")
    p.add_argument("--engine", default="fast", choices=["fast", "reference"])
    p.add_argument("--noise-scale", type=float, default=3.0)
    p.add_argument("--n-samples", type=int, default=10)
    p.add_argument("--snr-db", type=float, default=0.0)
    p.add_argument("--swap-audio", help="the other clip for --corruption swap")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="lalm-lens-out")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="lalm-lens", description="Hooked audio LMs and causal tracing.")
    sub = parser.add_subparsers(dest="command", required=True)

    t = sub.add_parser("trace", help="causal trace of one clip and question (default: the demo model)")
    add_model_args(t, default_model="demo")
    t.add_argument("--audio")
    t.add_argument("--prompt")
    t.add_argument("--answer", help="the expected one-token answer")
    t.add_argument("--options", nargs="+", help="the answer options named in the prompt")
    t.add_argument("--answer-prefix")
    t.add_argument("--transcript", help="DeSTA: the transcript (default: Whisper decoding)")
    add_trace_args(t, default_mode="both")
    t.set_defaults(func=cmd_trace)

    d = sub.add_parser("trace-dataset", help="causal traces over a JSONL of items, mean RR with 95%% CIs")
    add_model_args(d, default_model="demo")
    d.add_argument("--items", required=True, help="JSONL: audio, question, options, answer[, answer_prefix, id]")
    d.add_argument("--limit", type=int)
    d.add_argument("--no-filter", action="store_true", help="keep items the model gets wrong (clean) or right (corrupted)")
    add_trace_args(d, default_mode="layers")
    d.set_defaults(func=cmd_trace_dataset)

    v = sub.add_parser("verify", help="compare the hooked model with the original on one input")
    v.add_argument("model", help="hub id or local checkpoint folder")
    v.add_argument("--audio", help="audio file (default: a synthesized 3 s chirp)")
    v.add_argument("--prompt", default="Describe the audio.")
    v.add_argument("--dtype", choices=sorted(DTYPES), help="default: the checkpoint's own")
    v.add_argument("--device", help="default: cuda if available, else cpu")
    v.add_argument("--encoder-path", help="DeSTA: a local Whisper folder instead of the config's encoder id")
    v.add_argument("--llm-path", help="DeSTA: a local LM folder instead of the config's LM id")
    v.add_argument("--transcript", help="DeSTA: the transcript to use instead of Whisper decoding")
    v.set_defaults(func=cmd_verify)

    g = sub.add_parser("demo-data", help="write held-out synthetic items for trace-dataset")
    g.add_argument("--out", required=True)
    g.add_argument("-n", type=int, default=200)
    g.add_argument("--seed", type=int, default=1234)
    g.set_defaults(func=cmd_demo_data)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
