"""Shared by the analysis examples: a model and one prepared item (the demo's by default)."""

import argparse

import torch

from lalm_lens import HookedLALM


def parser(doc: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo", help="hub id or folder (default: the bundled demo model)")
    p.add_argument("--audio", help="a clip (default: a synthesized demo clip)")
    p.add_argument("--prompt", help="the question")
    p.add_argument("--answer", help="the one-token answer")
    p.add_argument("--options", nargs="+", help="the options named in the question")
    p.add_argument("--answer-prefix", help="e.g. \"The speaker's gender is\"")
    p.add_argument("--dtype", choices=["float32", "bfloat16"], help="default: the checkpoint's own")
    p.add_argument("--out", default="lalm_lens_out/analysis",
                   help="output folder (default: lalm_lens_out/analysis in the current folder, git-ignored)")
    return p


def load(args):
    from pathlib import Path

    Path(args.out).mkdir(parents=True, exist_ok=True)
    model = HookedLALM.from_pretrained(args.model, dtype=getattr(torch, args.dtype) if args.dtype else None)
    if args.audio is None:
        from lalm_lens.demo import demo_example

        args.audio, args.prompt, args.answer, args.options, args.answer_prefix = demo_example(f"{args.out}/clip.wav")
    inp = model.prepare(args.audio, args.prompt, answer_prefix=args.answer_prefix, options=args.options)
    return model, inp, args.answer
