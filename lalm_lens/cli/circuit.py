"""`lalm-lens circuit`: edge scores, a circuit, its faithfulness curve and drawing over a set of items."""

from __future__ import annotations

import argparse

from lalm_lens.cli.args import CLIError, add_model_args, check_writable, corruption_of, load_model

METHODS = ("eap", "eap-ig-inputs", "eap-ig-activations", "exact")


def add_parser(sub, formatter) -> None:
    c = sub.add_parser("circuit", help="edge attribution and a circuit over items (default: demo-letters items)",
                       formatter_class=formatter)
    add_model_args(c, default_model="demo-letters")
    c.add_argument("--items", help="JSONL of items (default for the demo models: N synthesized held-out items)")
    c.add_argument("-n", type=int, default=6, help="items used (the first N)")
    c.add_argument("--method", default="eap-ig-inputs", choices=METHODS, help="edge scores: EAP, EAP-IG or exact (default: eap-ig-inputs)")
    c.add_argument("--steps", type=int, default=5, help="EAP-IG: interpolation steps")
    c.add_argument("--fraction", type=float, default=0.1, help="edges kept in the circuit (top |score|, pruned)")
    c.add_argument("--foil", nargs="+", help="metric logit(answer) − mean logit(foils other than the answer) "
                                             "(default for demo-letters: A B C; otherwise P(answer))")
    c.add_argument("--corruption", default="silence", choices=["silence", "noise", "snr"], help="the corrupted run")
    c.add_argument("--noise-scale", type=float, default=3.0, help="noise: multiple of the audio vectors' std")
    c.add_argument("--n-samples", type=int, default=4, help="noise: seeded draws")
    c.add_argument("--snr-db", type=float, default=0.0, help="snr: signal-to-noise ratio in dB")
    c.add_argument("--seed", type=int, default=0, help="seed of the noise")
    c.add_argument("--compare-exact", action="store_true",
                   help="also run exact edge patching and report Spearman / top-1%% overlap with it")
    c.add_argument("--batch-size", type=int, default=1, help="items run as the padded rows of one batch")
    c.add_argument("--max-delta-gib", type=float, help="bound the per-edge activation difference (senders in chunks)")
    c.add_argument("--out", default="lalm-lens-out/circuit", help="output folder (default: lalm-lens-out/circuit)")
    c.add_argument("--no-html", action="store_true", help="do not write the interactive page (edge_scores.html)")
    c.set_defaults(func=cmd_circuit)


def cmd_circuit(args: argparse.Namespace) -> int:
    from lalm_lens.circuits.discover import discover, item_triples
    from lalm_lens.tracing.dataset import read_items

    if args.n < 1:
        raise CLIError(f"-n must be at least 1, got {args.n}")
    if args.steps < 1:
        raise CLIError(f"--steps must be at least 1, got {args.steps}")
    if args.batch_size < 1:
        raise CLIError(f"--batch-size must be at least 1, got {args.batch_size}")
    if args.max_delta_gib is not None and not args.max_delta_gib > 0:
        raise CLIError(f"--max-delta-gib must be positive, got {args.max_delta_gib}")
    if not 0 < args.fraction <= 1:
        raise CLIError(f"--fraction must be in (0, 1], got {args.fraction}")
    demo = args.model in ("demo", "demo-letters")
    if args.items is None and not demo:
        raise CLIError("--items is required unless --model is demo or demo-letters")
    out = check_writable(args.out)
    corruption = corruption_of(argparse.Namespace(swap_audio=None, **vars(args)))
    if args.items is None:
        from lalm_lens.demo import write_demo_dataset

        task = "letters" if args.model == "demo-letters" else "attributes"
        items_path = write_demo_dataset(out / "items", n=args.n, seed=4321, task=task)
    else:
        items_path = args.items
    items = read_items(items_path)[: args.n]
    foils = args.foil if args.foil else (["A", "B", "C"] if args.model == "demo-letters" else None)
    model = load_model(args)
    triples = item_triples(model, items, foils=foils)
    found = discover(model, triples, corruption, method=args.method, steps=args.steps, fraction=args.fraction,
                     compare_exact=args.compare_exact, batch_size=args.batch_size, max_delta_gib=args.max_delta_gib)
    found.save(out, html=not args.no_html)
    print(found.scores.summary())
    n = found.numbers()
    print(f"circuit: {n['circuit_edges']} of {n['n_edges']} edges; faithfulness by size: "
          + ", ".join(f"{k}: {_num(v)}" for k, v in n["faithfulness"].items()))
    if found.exact is not None:
        print(f"vs exact edge patching: Spearman {n['spearman_vs_exact']:.3f}, "
              f"top-1% overlap {n['top1pct_overlap_vs_exact']:.2f}")
    print(f"wrote {out}/edge_scores.json, circuit.json, faithfulness.json/.png, circuit.png, edge_scores.png"
          + ("" if args.no_html else ", edge_scores.html"))
    return 0


def _num(v: float) -> str:
    text = f"{v:.2f}"
    return "0.00" if text == "-0.00" else text
