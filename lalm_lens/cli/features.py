"""`lalm-lens features`: an SAE's top features over a set of items, each seen (over time) and heard (WAV windows)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from lalm_lens.cli.args import CLIError, add_model_args, check_writable, load_model


def add_parser(sub, formatter) -> None:
    f = sub.add_parser("features", help="an SAE's top features over items: activation over time, top audio windows "
                                        "as WAV clips, pages", formatter_class=formatter)
    add_model_args(f)
    f.add_argument("--sae", required=True, help="SAE folder: SAELens (cfg.json + sae_weights.safetensors) or "
                                                "sparsify (one hook point's cfg.json + sae.safetensors)")
    f.add_argument("--hook", help="the hook the SAE reads (default: the one its config names; a sparsify folder's "
                                  "name)")
    f.add_argument("--items", required=True, help="JSONL of items (as trace-dataset reads them)")
    f.add_argument("-n", type=int, help="items used (the first N; default: all)")
    f.add_argument("--top", type=int, default=5, help="features shown: the largest mean activation over the items' "
                                                      "audio positions")
    f.add_argument("--feature", type=int, nargs="+", help="these features instead of the top ones")
    f.add_argument("--window-seconds", type=float, default=0.5, help="length of the audio windows in seconds")
    f.add_argument("-k", type=int, default=10, help="top windows kept per feature")
    f.add_argument("--out", default="lalm-lens-out/features", help="output folder (default: lalm-lens-out/features)")
    f.add_argument("--no-html", action="store_true", help="do not write the interactive pages")
    f.set_defaults(func=cmd_features)


def cmd_features(args: argparse.Namespace) -> int:
    from lalm_lens.features.formats import load_sae
    from lalm_lens.features.views import feature_activation, feature_means, top_windows_many, write_clips
    from lalm_lens.tracing import plots
    from lalm_lens.tracing.dataset import read_items

    for flag, value in (("--top", args.top), ("-k", args.k), ("-n", args.n)):
        if value is not None and value < 1:
            raise CLIError(f"{flag} must be at least 1, got {value}")
    if args.window_seconds <= 0:
        raise CLIError(f"--window-seconds must be a positive number of seconds, got {args.window_seconds}")
    if not Path(args.sae).is_dir():
        raise CLIError(f"--sae {args.sae}: no such folder (an SAELens or sparsify SAE folder)")
    if not Path(args.items).is_file():
        raise CLIError(f"--items {args.items}: no such file")
    sae = load_sae(args.sae, hook_name=args.hook)
    if not sae.cfg.hook_name:
        raise CLIError(f"--sae {args.sae}: its config names no hook; pass --hook")
    if args.feature and not all(0 <= f < sae.cfg.d_sae for f in args.feature):
        raise CLIError(f"--feature {args.feature}: the SAE has features 0..{sae.cfg.d_sae - 1}")
    out = check_writable(args.out)
    items = read_items(args.items)[: args.n]
    if not items:
        raise CLIError(f"--items {args.items}: no readable item")
    model = load_model(args)
    with model.saes([sae]):
        means = feature_means(model, sae, items)
        features = args.feature or means.topk(min(args.top, sae.cfg.d_sae)).indices.tolist()
        found = top_windows_many(model, sae, items, features, args.window_seconds, args.k)
        by_id = {item.id: item for item in items}
        for f in features:
            top, folder = found[f], out / f"feature_{f}"
            top.save(folder / "top_windows.json")
            write_clips(top, folder / "clips")
            best = by_id[top.windows[0]["item"]]
            inp = model.prepare(best.audio, best.question, answer_prefix=best.answer_prefix, options=best.options)
            act = feature_activation(model, sae, inp, f, item=best.id)
            act.save(folder / "activation.json")
            plots.save(act.plot(), folder / "activation.png")
            if not args.no_html:
                act.to_html(folder / "activation.html", audio=best.audio, js=out / "plotly.min.js")
                top.to_html(folder / "top_windows.html", js=out / "plotly.min.js")
            print(f"{top.summary()}\n  wrote {folder}/top_windows.json, activation.json/.png, clips/"
                  + ("" if args.no_html else ", activation.html, top_windows.html"))
    (out / "features.json").write_text(json.dumps(dict(
        model=args.model, sae=str(args.sae), hook=found[features[0]].hook, n_items=len(items), features=features,
        mean_activation={str(f): float(means[f]) for f in features}), indent=1))
    return 0
