"""`lalm-lens trace` (token positions, audio time windows, heads), `lalm-lens lens` and `lalm-lens trace-dataset`."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from lalm_lens.cli.args import (DEMOS, CLIError, add_family_options, add_model_args, add_trace_args, check_audio_file,
                                check_model_name, check_writable, load_model, prepare_options, trace_settings)
from lalm_lens.cli.report import add_html_arg, clip_of


def add_item_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("item")
    g.add_argument("--audio", help="the clip (with --model demo and no --audio: a synthesized demo clip)")
    g.add_argument("--prompt", help="the question, as the user turn")
    g.add_argument("--answer", help="the expected one-token answer (a string, or a token id)")
    g.add_argument("--options", nargs="+", help="the answer options named in the prompt (the 'object' tokens)")
    g.add_argument("--answer-prefix", help="text after the generation prompt, e.g. \"The speaker's gender is\"")
    add_family_options(g, "prepare_options")


def add_parsers(sub, formatter) -> None:
    t = sub.add_parser("trace", help="causal trace of one clip and question (default: the demo model)",
                       formatter_class=formatter)
    add_model_args(t, default_model="demo")
    add_item_args(t)
    add_trace_args(t, default_mode="both")
    g = t.add_argument_group("sweep")
    g.add_argument("--sweep", default="positions", choices=["positions", "audio-time", "heads"],
                   help="positions: the paper's token-wise/layer-wise cells (--mode); audio-time: the audio positions "
                        "in time windows at each layer; heads: one head's attention output (z) at each layer")
    g.add_argument("--window-seconds", type=float, default=0.5, help="audio-time: the width of a time window")
    g.add_argument("--head-positions", default="all", choices=["all", "final"],
                   help="heads: restore the head's z at every position or at the final one")
    t.add_argument("--allow-ill-posed", action="store_true",
                   help="exit 0 even when a check fails (the outputs are flagged either way)")
    t.add_argument("--hide-template", action="store_true", help="leave the chat-template rows out of the heatmap")
    add_html_arg(t)
    t.set_defaults(func=cmd_trace)

    lens = sub.add_parser("lens", help="logit lens: what each layer already predicts, at the final position and "
                                       "over the audio", formatter_class=formatter)
    add_model_args(lens, default_model="demo")
    add_item_args(lens)
    lens.add_argument("--corruption", default="silence", choices=["silence", "noise", "none"],
                      help="the run compared with the clean one ('none': the clean run only)")
    lens.add_argument("--top-k", type=int, default=5, help="top tokens listed per layer")
    lens.add_argument("--seed", type=int, default=0, help="seed of the demo clip and the noise")
    lens.add_argument("--out", default="lalm-lens-out", help="output folder")
    add_html_arg(lens)
    lens.set_defaults(func=cmd_lens)

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
    add_html_arg(d)
    d.set_defaults(func=cmd_trace_dataset)


def _answer(value):
    return int(value) if value is not None and value.isdigit() else value


def check_item_args(args: argparse.Namespace) -> bool:
    """The model name and the item's flags, checked before any work; True for the demo's own clip."""
    audio, prompt, answer, options, prefix = args.audio, args.prompt, args.answer, args.options, args.answer_prefix
    check_model_name(args.model)
    demo = args.model in DEMOS and audio is None
    typed = [flag for flag, v in (("--prompt", prompt), ("--answer", answer), ("--options", options),
                                  ("--answer-prefix", prefix)) if v is not None]
    if demo and typed:
        raise CLIError(f"{', '.join(typed)} without --audio: with no --audio the demo traces its own clip and "
                       "question; pass --audio FILE with them (and --prompt, --answer), or drop them")
    if not demo:
        missing = [name for name, v in (("--audio", audio), ("--prompt", prompt), ("--answer", answer)) if v is None]
        if missing:
            raise CLIError(f"{', '.join(missing)} required with --model {args.model}")
        check_audio_file(audio, "--audio")
    if getattr(args, "swap_audio", None):
        check_audio_file(args.swap_audio, "--swap-audio")
    return demo


def load_item(args: argparse.Namespace, out: Path):
    """The model and the prepared item (a synthesized demo clip when `--model demo` or `demo-letters` has no
    `--audio`); the flags and audio files are checked before the model loads."""
    demo = check_item_args(args)
    audio, prompt, answer, options, prefix = args.audio, args.prompt, args.answer, args.options, args.answer_prefix
    model = load_model(args)
    if demo:
        from lalm_lens.demo import demo_example

        task = "letters" if args.model == "demo-letters" else "attributes"
        audio, prompt, answer, options, prefix = demo_example(out / "demo_clip.wav", seed=args.seed, task=task)
        print(f"demo clip: {out / 'demo_clip.wav'}\nprompt: {prompt}\nanswer prefix: {prefix!r}; "
              f"expected answer: {answer!r}")
    inp = model.prepare(audio, prompt, answer_prefix=prefix, options=options, **prepare_options(args))
    return model, inp, _answer(answer), dict(prompt=prompt, answer=answer, answer_prefix=prefix, options=options)


def run_traces(args, model, inp, answer, settings, out: Path) -> list:
    """The results the chosen sweep asks for, each saved (JSON, and NPZ for position sweeps) with its figure."""
    from lalm_lens.tracing import audio_time_trace, causal_trace, head_trace, plots

    if args.sweep == "audio-time":
        runs = [("audio_time", lambda: audio_time_trace(model, inp, answer=answer, window_seconds=args.window_seconds,
                                                         **settings), "audio_time.png")]
    elif args.sweep == "heads":
        kw = {k: v for k, v in settings.items() if k not in ("states", "window")}
        runs = [("heads", lambda: head_trace(model, inp, answer=answer, positions=args.head_positions, **kw),
                 "heads.png")]
    else:
        modes = ["tokens", "layers"] if args.mode == "both" else [args.mode]
        runs = [(mode, lambda mode=mode: causal_trace(model, inp, answer=answer, mode=mode, **settings),
                 "heatmap_tokens.png" if mode == "tokens" else "recovery_layers.png") for mode in modes]
    import warnings

    from lalm_lens.tracing import IllPosedTraceWarning

    results = []
    for name, run, figure in runs:
        with warnings.catch_warnings():  # the summary below says it once, as its WARNING line
            warnings.simplefilter("ignore", IllPosedTraceWarning)
            result = run()
        result.save(out / f"trace_{name}.json")
        if args.sweep == "positions":
            result.save(out / f"trace_{name}.npz")
        ax = result.plot(hide_template=args.hide_template) if name == "tokens" else result.plot()
        plots.save(ax, out / figure)
        if not args.no_html:
            result.to_html(out / f"trace_{name}.html", audio=clip_of(args, out))
        print(f"\n[{name}] {result.summary()}\n  wrote {out / f'trace_{name}.json'} and {out / figure}")
        results.append((name, result))
    return results


def cmd_trace(args: argparse.Namespace) -> int:
    check_item_args(args)
    settings = trace_settings(args)  # argument errors before any work
    if args.sweep != "positions" and args.mode != "both":
        raise CLIError(f"--mode applies to --sweep positions, not --sweep {args.sweep}")
    out = check_writable(args.out)
    model, inp, answer, item = load_item(args, out)
    results = run_traces(args, model, inp, answer, settings, out)
    summary = dict(model=args.model, **item, settings=results[-1][1].settings,
                   traces={name: result.numbers() for name, result in results})
    name = "summary.json" if args.sweep == "positions" else f"summary_{args.sweep.replace('-', '_')}.json"
    (out / name).write_text(json.dumps(summary, indent=1, default=str))  # one per sweep: a shared --out keeps all
    if any(result.ill_posed for _, result in results) and not args.allow_ill_posed:
        print("lalm-lens: the trace is ill-posed (see WARNING above); its outputs are written and flagged. "
              "Pass --allow-ill-posed to exit 0 anyway.", file=sys.stderr)
        return 1
    return 0


def cmd_lens(args: argparse.Namespace) -> int:
    from lalm_lens.tracing import GaussianNoise, logit_lens, plots

    if args.top_k < 1:
        raise CLIError(f"--top-k must be at least 1, got {args.top_k}")
    check_item_args(args)
    out = check_writable(args.out)
    model, inp, answer, _ = load_item(args, out)
    corruption = {"none": None, "silence": "silence", "noise": GaussianNoise(seed=args.seed)}[args.corruption]
    result = logit_lens(model, inp, corruption, answer=answer, top_k=args.top_k)
    result.save(out / "lens.json")
    plots.save(result.plot(), out / "lens.png")
    if not args.no_html:
        result.to_html(out / "lens.html", audio=clip_of(args, out))
    print(f"{result.summary()}\n  wrote {out / 'lens.json'} and {out / 'lens.png'}")
    return 0


def say_resuming(path: Path, items) -> None:
    """A resumed run says so: how many of the items already have a record that will be reused."""
    from lalm_lens.tracing.records import read_records

    if not path.is_file():
        return
    _, records = read_records(path, repair=False)
    done = {r.get("id") for r in records if r.get("status") != "error"}
    have = sum(item.id in done for item in items)
    if have:
        print(f"resuming {path}: {have} of {len(items)} items already traced there are reused "
              "(--overwrite to start over)")


def cmd_trace_dataset(args: argparse.Namespace) -> int:
    import warnings

    from lalm_lens.tracing import distributed, plots, trace_dataset
    from lalm_lens.tracing.dataset import as_items

    check_model_name(args.model)
    settings = trace_settings(args)
    if args.batch_items != "auto" and not (args.batch_items.isdigit() and int(args.batch_items) >= 1):
        raise CLIError(f"--batch-items must be a positive integer or 'auto', got {args.batch_items!r}")
    if not Path(args.items).is_file():
        raise CLIError(f"--items {args.items}: no such file")
    if args.limit is not None and args.limit < 1:
        raise CLIError(f"--limit must be a whole number of items >= 1, got {args.limit}")
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
    if dist.main and not args.overwrite:
        say_resuming(out / "records.jsonl", items)
    result = trace_dataset(model, items, out=out / "records.jsonl", mode=args.mode, overwrite=args.overwrite,
                           filter=None if args.no_filter else "checks", batch_items=batch, **settings)
    if not dist.main:
        return 0  # rank 0 merged the records and writes the summary
    result.save(out / "summary.json")
    figure = out / f"recovery_{args.mode}.png"
    if result.kept:
        plots.save(result.plot(), figure)
        if not args.no_html:
            result.to_html(out / "summary.html")
    print(result.summary())
    print(f"wrote {out / 'records.jsonl'}, {out / 'summary.json'}" + (f", {figure}" if result.kept else ""))
    if result.all_failed:
        print("lalm-lens: every item failed (see the errors in records.jsonl)", file=sys.stderr)
        return 1
    return 0
