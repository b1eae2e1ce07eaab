"""Token-wise causal tracing (the reference study's second analysis) for any supported model.

Restore one position at one layer at a time; report the recovery per token
group (early prompt, object = the option list, late prompt, final token), the
dataset mean with 95% CIs, and one ROME-style heatmap for the first item.
GPU memory per model: see paper_layerwise.py.

    python examples/paper_tokenwise.py                                  # demo model
    python examples/paper_tokenwise.py --model Qwen/Qwen2-Audio-7B-Instruct --sakura /data/SAKURA --track Gender
"""

import argparse
from pathlib import Path

import torch

from lalm_lens import HookedLALM
from lalm_lens.tracing import causal_trace, load_sakura, plots, read_items, trace_dataset


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo")
    p.add_argument("--sakura", help="root of a SAKURA checkout")
    p.add_argument("--track", default="Gender")
    p.add_argument("--items", help="a JSONL of items instead")
    p.add_argument("--n", type=int, default=50)
    p.add_argument("--dtype", default=None, choices=[None, "bfloat16", "float16", "float32"])
    p.add_argument("--out", default="lalm_lens_out/paper_tokenwise", help="output folder (git-ignored by default)")
    args = p.parse_args()
    out = Path(args.out)
    model = HookedLALM.from_pretrained(args.model, dtype=getattr(torch, args.dtype) if args.dtype else None)
    if args.sakura:
        items = load_sakura(args.sakura, args.track)[: args.n]
    else:
        if args.items is None:
            from lalm_lens.demo import write_demo_dataset

            args.items = write_demo_dataset(out / "demo_items", n=args.n)
        items = read_items(args.items)[: args.n]
    result = trace_dataset(model, items, out=out / "records.jsonl", mode="tokens")
    print(result.summary())
    if result.kept:
        plots.save(result.plot(title=f"token-wise recovery by group: {args.model}"), out / "groups.png")
        first = next(i for i in items if i.id == result.kept[0]["id"])
        inp = model.prepare(first.audio, first.question, answer_prefix=first.answer_prefix, options=first.options)
        trace = causal_trace(model, inp, answer=first.answer, mode="tokens")
        plots.save(trace.plot(), out / "heatmap_first_item.png")
        print(f"figures in {out}")


if __name__ == "__main__":
    main()
