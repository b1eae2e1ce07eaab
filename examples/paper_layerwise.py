"""Layer-wise causal tracing (the reference study's first analysis) for any supported model.

At each layer, restore the clean residual stream of all text tokens in the
silence-corrupted run and measure the recovery rate; average over a dataset
with 95% CIs and plot one curve per attribute.

GPU memory needed (weights in bfloat16, plus a few GB for activations):
  demo (default)                       CPU is enough
  Qwen/Qwen2-Audio-7B-Instruct          ~18 GB
  mistralai/Voxtral-Mini-3B-2507        ~10 GB
  mistralai/Voxtral-Small-24B-2507      ~50 GB
  DeSTA-ntu/DeSTA2.5-Audio-Llama-3.1-8B ~19 GB

    python examples/paper_layerwise.py                                 # demo model, synthetic items
    python examples/paper_layerwise.py --model Qwen/Qwen2-Audio-7B-Instruct --sakura /data/SAKURA --n 500
"""

import argparse
from pathlib import Path

import torch

from lalm_lens import HookedLALM
from lalm_lens.tracing import load_sakura, plots, read_items, trace_dataset


def datasets(args):
    """{name: items}: SAKURA tracks (AudioLens prompts) or the demo's attributes."""
    if args.sakura:
        return {t: load_sakura(args.sakura, t)[: args.n] for t in ("Animal", "Emotion", "Gender", "Language")}
    if args.items:
        return {Path(args.items).stem: read_items(args.items)[: args.n]}
    from lalm_lens.demo import write_demo_dataset

    items = read_items(write_demo_dataset(Path(args.out) / "demo_items", n=args.n))
    by_attribute = {}
    for item in items:
        by_attribute.setdefault(item.meta["attribute"], []).append(item)
    return by_attribute


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="demo")
    p.add_argument("--sakura", help="root of a SAKURA checkout")
    p.add_argument("--items", help="a JSONL of items instead")
    p.add_argument("--n", type=int, default=100)
    p.add_argument("--corruption", default="silence")
    p.add_argument("--dtype", default=None, choices=[None, "bfloat16", "float16", "float32"])
    p.add_argument("--out", default="lalm_lens_out/paper_layerwise", help="output folder (git-ignored by default)")
    args = p.parse_args()
    model = HookedLALM.from_pretrained(args.model, dtype=getattr(torch, args.dtype) if args.dtype else None)
    curves = {}
    for name, items in datasets(args).items():
        result = trace_dataset(model, items, out=Path(args.out) / f"{name}.jsonl", mode="layers",
                               corruption=args.corruption)
        print(f"[{name}] {result.summary()}")
        if result.kept:
            curves[name] = result.layer_curve()
    if curves:
        path = plots.save(plots.plot_layers(curves, title=f"layer-wise recovery: {args.model}"),
                          Path(args.out) / "layerwise.png")
        print(f"figure: {path}")


if __name__ == "__main__":
    main()
