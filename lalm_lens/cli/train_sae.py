"""`lalm-lens train-sae`: a TopK SAE (or, with --hook-out, a transcoder) on a hook's activations over items,
saved in sparsify's format."""

from __future__ import annotations

import argparse

from lalm_lens.cli.args import CLIError, add_model_args, check_writable, load_model
from lalm_lens.features.store import DTYPES, POSITIONS

DEMO_TASKS = {"demo": "attributes", "demo-letters": "letters"}  # items written when --items is not given


def add_parser(sub, formatter) -> None:
    t = sub.add_parser("train-sae", help="train a TopK SAE on a hook's activations over items (sparsify format)",
                       formatter_class=formatter)
    add_model_args(t)
    t.add_argument("--items", help="JSONL of items (default for the demo models: N synthesized items)")
    t.add_argument("-n", type=int, default=40, help="items used (the first N)")
    t.add_argument("--hook", required=True, help="hook point to read, e.g. blocks.1.hook_resid_post")
    t.add_argument("--hook-out", help="train a transcoder: the hook it predicts from --hook, of the same width "
                   "(e.g. blocks.1.hook_mlp_out from blocks.1.ln2.hook_normalized)")
    t.add_argument("--positions", default="audio", choices=POSITIONS,
                   help="audio: the audio vectors; text: every other position; all: both")
    t.add_argument("--d-sae", type=int, default=256, help="number of latents")
    t.add_argument("--k", type=int, default=8, help="active latents per position (TopK)")
    t.add_argument("--steps", type=int, default=300, help="Adam steps")
    t.add_argument("--batch-size", type=int, default=256, help="activation rows per step")
    t.add_argument("--lr", type=float, help="learning rate (default: sparsify's 2e-4 / sqrt(d_sae / 2^14))")
    t.add_argument("--holdout", type=float, default=0.2, help="fraction of the items held out for the report")
    t.add_argument("--store-mb", type=float, default=512.0, help="bound of the on-disk activation store in MB")
    t.add_argument("--store-dtype", default="float32", choices=sorted(DTYPES), help="dtype of the stored activations")
    t.add_argument("--seed", type=int, default=0,
                   help="seed of the SAE's initialisation and of the minibatches (default: 0)")
    t.add_argument("--out", default="lalm-lens-out/sae", help="output folder (default: lalm-lens-out/sae)")
    t.set_defaults(func=cmd_train_sae)


def cmd_train_sae(args: argparse.Namespace) -> int:
    from lalm_lens.demo import write_demo_dataset
    from lalm_lens.features.training_run import train_sae
    from lalm_lens.tracing.dataset import read_items

    for name, value, low in (("-n", args.n, 2), ("--d-sae", args.d_sae, 1), ("--k", args.k, 1),
                             ("--steps", args.steps, 1), ("--batch-size", args.batch_size, 1)):
        if value < low:
            raise CLIError(f"{name} must be at least {low}, got {value}")
    if args.k > args.d_sae:
        raise CLIError(f"--k ({args.k}) must not exceed --d-sae ({args.d_sae})")
    if not 0 < args.holdout < 1:
        raise CLIError(f"--holdout must be in (0, 1), got {args.holdout}")
    if not args.store_mb > 0:
        raise CLIError(f"--store-mb must be positive, got {args.store_mb}")
    if args.items is None and args.model not in DEMO_TASKS:
        raise CLIError("--items is required unless --model is demo or demo-letters")
    out = check_writable(args.out)
    if (out / "activations").exists() and any((out / "activations").iterdir()):
        raise CLIError(f"{out}/activations already holds a store; choose another --out or remove it")
    items = read_items(args.items or write_demo_dataset(out / "items", args.n, 4321, DEMO_TASKS[args.model]))[: args.n]
    model = load_model(args)
    if args.hook not in model.hook_dict:
        raise CLIError(f"--hook {args.hook!r} is not a hook point of {args.model}; e.g. blocks.0.hook_resid_post")
    if args.hook_out is not None and (args.hook_out not in model.hook_dict or args.hook_out == args.hook):
        raise CLIError(f"--hook-out {args.hook_out!r} must be another hook point of {args.model}, "
                       "e.g. blocks.0.hook_mlp_out for --hook blocks.0.ln2.hook_normalized")
    _, r = train_sae(model, items, args.hook, positions=args.positions, d_sae=args.d_sae, k=args.k, steps=args.steps,
                     seed=args.seed, out=out, batch_size=args.batch_size, lr=args.lr, holdout=args.holdout,
                     max_mb=args.store_mb, dtype=args.store_dtype, hook_out=args.hook_out)
    what = f"transcoder {args.hook} -> {args.hook_out}" if args.hook_out else f"SAE at {args.hook}"
    print(f"{what} ({args.positions} positions, {r['rows']['train']} training rows): L0 {r['l0']:.2f}, "
          f"FVU {r['fvu']:.3f} (initial {r['fvu_initial']:.3f}), dead {r['dead']}/{r['d_sae']}; spliced without the "
          f"error term: ΔP(answer) {r['delta_p_answer']:+.4f}, Δloss {r['delta_loss']:+.4f}, KL {r['kl']:.4f} "
          f"on {r['n_items']} held-out items")
    print(f"wrote {out}/{args.hook}/cfg.json, sae.safetensors, {out}/report.json")
    return 0
