"""`lalm-lens trace` and `lalm-lens trace-dataset`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lalm_lens.cli.args import (CLIError, add_model_args, add_trace_args, check_audio_file, check_writable, load_model,
                                trace_settings)


def add_parsers(sub, formatter) -> None:
    t = sub.add_parser("trace", help="causal trace of one clip and question (default: the demo model)",
                       formatter_class=formatter)
    add_model_args(t, default_model="demo")
    g = t.add_argument_group("item")
    g.add_argument("--audio", help="the clip (with --model demo and no --audio: a synthesized demo clip)")
    g.add_argument("--prompt", help="the question, as the user turn")
    g.add_argument("--answer", help="the expected one-token answer (a string, or a token id)")
    g.add_argument("--options", nargs="+", help="the answer options named in the prompt (the 'object' tokens)")
    g.add_argument("--answer-prefix", help="text after the generation prompt, e.g. \"The speaker's gender is\"")
    g.add_argument("--transcript", help="DeSTA: the transcript (default: Whisper decoding)")
    add_trace_args(t, default_mode="both")
    t.add_argument("--allow-ill-posed", action="store_true",
                   help="exit 0 even when a check fails (the outputs are flagged either way)")
    t.add_argument("--hide-template", action="store_true", help="leave the chat-template rows out of the heatmap")
    t.set_defaults(func=cmd_trace)

    d = sub.add_parser("trace-dataset", help="causal traces over a JSONL of items, mean RR with 95%% CIs",
                       formatter_class=formatter)
    add_model_args(d, default_model="demo")
    d.add_argument("--items", required=True, help="JSONL: audio, question, answer[, options, answer_prefix, id]")
    d.add_argument("--limit", type=int, help="trace only the first N items")
    d.add_argument("--no-filter", action="store_true",
                   help="keep items that fail a check (clean top-1 not the answer, corrupted top-1 still it, "
                        "effect below --min-effect); they are flagged")
    d.add_argument("--overwrite", action="store_true", help="start over instead of resuming records.jsonl in --out")
    d.add_argument("--batch-items", default="1",
                   help="items whose cells run in one engine call ('auto': as many as fill the engine's batch budget)")
    add_trace_args(d, default_mode="layers")
    d.set_defaults(func=cmd_trace_dataset)


def _answer(value):
    return int(value) if value is not None and value.isdigit() else value


def cmd_trace(args: argparse.Namespace) -> int:
    from lalm_lens.tracing import causal_trace, plots

    settings = trace_settings(args)  # argument errors before any work
    out = check_writable(args.out)
    audio, prompt, answer, options, prefix = args.audio, args.prompt, args.answer, args.options, args.answer_prefix
    demo = args.model == "demo" and audio is None
    if not demo:
        missing = [name for name, v in (("--audio", audio), ("--prompt", prompt), ("--answer", answer)) if v is None]
        if missing:
            raise CLIError(f"{', '.join(missing)} required with --model {args.model}")
        check_audio_file(audio, "--audio")
    if args.swap_audio:
        check_audio_file(args.swap_audio, "--swap-audio")
    model = load_model(args)
    if demo:
        from lalm_lens.demo import demo_example

        audio, prompt, answer, options, prefix = demo_example(out / "demo_clip.wav", seed=args.seed)
        print(f"demo clip: {out / 'demo_clip.wav'}\nprompt: {prompt}\nanswer prefix: {prefix!r}; "
              f"expected answer: {answer!r}")
    extra = {"transcript": args.transcript} if args.transcript is not None else {}
    inp = model.prepare(audio, prompt, answer_prefix=prefix, options=options, **extra)
    modes = ["tokens", "layers"] if args.mode == "both" else [args.mode]
    numbers, ill_posed = {}, []
    for mode in modes:
        result = causal_trace(model, inp, answer=_answer(answer), mode=mode, **settings)
        result.save(out / f"trace_{mode}.json")
        result.save(out / f"trace_{mode}.npz")
        figure = out / ("heatmap_tokens.png" if mode == "tokens" else "recovery_layers.png")
        ax = result.plot(hide_template=args.hide_template) if mode == "tokens" else result.plot()
        plots.save(ax, figure)
        print(f"\n[{mode}] {result.summary()}\n  wrote {out / f'trace_{mode}.json'} and {figure}")
        numbers[mode] = result.numbers()
        if result.ill_posed:
            ill_posed.append(mode)
    summary = dict(model=args.model, prompt=prompt, answer=answer, answer_prefix=prefix, options=options,
                   settings=result.settings, traces=numbers)
    (out / "summary.json").write_text(json.dumps(summary, indent=1, default=str))
    if ill_posed and not args.allow_ill_posed:
        print(f"lalm-lens: the trace is ill-posed (see WARNING above); its outputs are written and flagged. "
              "Pass --allow-ill-posed to exit 0 anyway.", file=sys.stderr)
        return 1
    return 0


def cmd_trace_dataset(args: argparse.Namespace) -> int:
    import warnings

    from lalm_lens.tracing import distributed, plots, trace_dataset
    from lalm_lens.tracing.dataset import as_items

    settings = trace_settings(args)
    if args.batch_items != "auto" and not (args.batch_items.isdigit() and int(args.batch_items) >= 1):
        raise CLIError(f"--batch-items must be a positive integer or 'auto', got {args.batch_items!r}")
    if not Path(args.items).is_file():
        raise CLIError(f"--items {args.items}: no such file")
    items = as_items(args.items)[: args.limit]
    if not items:
        raise CLIError(f"--items {args.items}: no usable item")
    missing = [i for i in items if not Path(str(i.audio)).is_file()]
    if missing:
        warnings.warn(f"{len(missing)} of {len(items)} items' audio files are missing (e.g. {missing[0].audio}); "
                      "they will be recorded as errors")
    if args.swap_audio:
        check_audio_file(args.swap_audio, "--swap-audio")
    out = check_writable(args.out)
    dist = distributed.from_env()
    if args.device is None:
        args.device = distributed.default_device(dist)  # under torchrun: this rank's own GPU
    model = load_model(args)
    batch = "auto" if args.batch_items == "auto" else int(args.batch_items)
    result = trace_dataset(model, items, out=out / "records.jsonl", mode=args.mode, overwrite=args.overwrite,
                           filter=None if args.no_filter else "checks", batch_items=batch, **settings)
    if not dist.main:
        return 0  # rank 0 merged the records and writes the summary
    result.save(out / "summary.json")
    figure = out / f"recovery_{args.mode}.png"
    if result.kept:
        plots.save(result.plot(), figure)
    print(result.summary())
    print(f"wrote {out / 'records.jsonl'}, {out / 'summary.json'}" + (f", {figure}" if result.kept else ""))
    if result.all_failed:
        print("lalm-lens: every item failed (see the errors in records.jsonl)", file=sys.stderr)
        return 1
    return 0
