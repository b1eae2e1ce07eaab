"""SAE features of the `demo` model: which track pitch, pattern and loudness, and which flip the answer.

Trains two TopK SAEs (EleutherAI sparsify's trainer, `train_sae`) where the audio's effect enters and
fuses: at `hook_audio_embeds` (the audio tokens the LM reads) and at `blocks.2.hook_resid_post` (the
final position is where the demo's answer forms, layers 1-2). The first 75 % of the clips train the
SAEs and choose features; every number below is on the held-out 25 %.

1. For each attribute value (pitch=high, loudness=quiet, ...), the feature whose activation best
   separates it from the other values on the training clips, and on the held-out clips its AUC (the
   chance that a clip with the value activates it more than one without) and its mean activation by
   value. Audio SAE: mean over the clip's audio tokens, every clip. LM SAE: at the final position of
   the clips asked about that attribute (the final state depends on the question).
2. Clamping: each chosen feature set to c × (its largest activation on the training clips) — at
   every audio token for the audio SAE, at the final position for the LM SAE — on held-out clips
   asked about its attribute whose answer is another value; how many now answer its value. Spliced
   with the error term, so the only change is the clamped feature's decoded change.

    python examples/sae_features.py                          # 160 clips, ~1 min on one CPU core
    python examples/sae_features.py --figures docs/figures   # the README's figures
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from lalm_lens import HookedLALM
from lalm_lens.demo import write_demo_dataset
from lalm_lens.demo.synth import ATTRIBUTES, prompt_for
from lalm_lens.features import ClampFeature
from lalm_lens.features.training_run import train_sae
from lalm_lens.tracing import read_items
from lalm_lens.tracing.groups import final_position
from lalm_lens.tracing.pipeline import answer_token

AUDIO_HOOK = "hook_audio_embeds"
LM_HOOK = "blocks.2.hook_resid_post"
CLAMP_SCALES = (1.0, 2.0, 4.0, 8.0)


def asked(item, attribute: str):
    """The same clip asked about `attribute` (the demo's items record every attribute of their clip)."""
    spec = ATTRIBUTES[attribute]
    return replace(item, id=f"{item.id}-{attribute}", question=prompt_for(attribute),
                   answer=item.meta["attributes"][attribute], options=list(spec["options"]),
                   answer_prefix=spec["prefix"], meta={**item.meta, "attribute": attribute})


def prepare(model, item):
    return model.prepare(item.audio, item.question, answer_prefix=item.answer_prefix, options=item.options)


@torch.no_grad()
def item_features(model, sae, items, hook: str) -> np.ndarray:
    """[items, d_sae]: each clip's feature activations — the mean over its audio tokens at an audio
    hook, the final position's at an LM hook."""
    rows = []
    for item in items:
        inp = prepare(model, item)
        x = model.run_with_cache(inp, names_filter=hook)[1][hook]
        acts = sae.activation(sae.hidden_pre(x))
        rows.append(acts.mean(0) if acts.dim() == 2 else acts[0, final_position(model.model_inputs(inp))])
    return torch.stack(rows).float().numpy()


def auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """P(a positive scores above a negative), ties counting half (the Mann-Whitney AUC); NaN if a side is empty."""
    if not len(pos) or not len(neg):
        return float("nan")
    d = pos[:, None] - neg[None, :]
    return float((d > 0).mean() + 0.5 * (d == 0).mean())


def attribute_features(feats_fit, items_fit, feats_test, items_test, per_question: bool) -> dict:
    """For every attribute value: the feature with the best AUC (value vs the other values) on the fit
    clips, and on the test clips its AUC and mean activation by value. `per_question`: use only clips
    asked about that attribute (an LM hook's final position)."""
    table = {}
    for attribute, spec in ATTRIBUTES.items():
        def rows(items):
            return np.array([i for i, it in enumerate(items) if not per_question or it.meta["attribute"] == attribute])

        fit, test = rows(items_fit), rows(items_test)
        y_fit = np.array([items_fit[i].meta["attributes"][attribute] for i in fit])
        y_test = np.array([items_test[i].meta["attributes"][attribute] for i in test])
        table[attribute] = {}
        for value in spec["options"]:
            scores = [auc(feats_fit[fit][y_fit == value, f], feats_fit[fit][y_fit != value, f])
                      for f in range(feats_fit.shape[1])]
            f = int(np.argmax(scores))
            col = feats_test[test, f]
            table[attribute][value] = {
                "feature": f, "auc_fit": round(scores[f], 4),
                "auc_test": round(auc(col[y_test == value], col[y_test != value]), 4),
                "mean_by_value": {v: round(float(col[y_test == v].mean()), 4) if (y_test == v).any() else None
                                  for v in spec["options"]},
                "max_fit": round(float(feats_fit[fit, f].max()), 4), "n_test": len(test)}
    return table


@torch.no_grad()
def clamp_flips(model, sae, items, feature: int, values, target: str, at_final: bool) -> list[dict]:
    """Clamp `feature` to each of `values` (every position of the spliced hook, or the final one) on
    `items`; per value, how many answer `target` (top-1 at the final position) before and after, and
    the mean P(target)."""
    hits = np.zeros((len(values) + 1, len(items)))
    probs = np.zeros((len(values) + 1, len(items)))
    with model.saes([sae], use_error_term=True):
        for i, item in enumerate(items):
            inp = prepare(model, item)
            at = final_position(model.model_inputs(inp))
            token, _ = answer_token(model, inp, target)
            runs = [model(inp)[0, at]]  # unedited: with the error term, the model's own logits
            for value in values:
                clamp = ClampFeature(sae, feature, value, positions=[at] if at_final else "all")
                runs.append(model.run_with_hooks(inp, fwd_hooks=clamp.hooks(model, inp))[0, at])
            for j, logits in enumerate(runs):
                hits[j, i] = int(logits.argmax()) == token
                probs[j, i] = float(logits.float().softmax(-1)[token])
    return [{"n": len(items), "target_before": int(hits[0].sum()), "target_after": int(hits[j + 1].sum()),
             "p_target_before": float(probs[0].mean()), "p_target_after": float(probs[j + 1].mean())}
            for j in range(len(values))]


def clamp_table(model, sae, hook: str, table: dict, items_test, scales=CLAMP_SCALES) -> list[dict]:
    """Every chosen feature clamped at `scales` × its fit maximum on the held-out clips (each asked
    about its attribute) whose answer is another value."""
    rows = []
    for attribute, per_value in table.items():
        clips = [asked(it, attribute) for it in items_test]
        for value, entry in per_value.items():
            others = [it for it in clips if it.answer != value]
            values = [scale * entry["max_fit"] for scale in scales]
            results = clamp_flips(model, sae, others, entry["feature"], values, value, at_final=hook != AUDIO_HOOK)
            for scale, clamp_value, result in zip(scales, values, results):
                rows.append({"hook": hook, "attribute": attribute, "target": value, "feature": entry["feature"],
                             "scale": scale, "value": round(clamp_value, 4), **result})
    return rows


def plot_features(tables: dict, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(tables), len(ATTRIBUTES), figsize=(12, 3.4 * len(tables)), squeeze=False)
    for r, (hook, table) in enumerate(tables.items()):
        for c, (attribute, per_value) in enumerate(table.items()):
            ax = axes[r, c]
            values = list(ATTRIBUTES[attribute]["options"])
            width = 0.8 / len(per_value)
            for j, (value, entry) in enumerate(per_value.items()):
                means = [np.nan if entry["mean_by_value"][v] is None else entry["mean_by_value"][v] for v in values]
                ax.bar(np.arange(len(values)) + (j - (len(per_value) - 1) / 2) * width, means, width,
                       label=f"f{entry['feature']} ({value}; AUC {entry['auc_test']:.2f})")
            ax.set_xticks(range(len(values)), values)
            ax.set_title(f"{hook}: {attribute}", fontsize=9)
            ax.set_ylabel("mean activation (held out)" if c == 0 else "")
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_clamps(rows: list[dict], path: Path) -> None:
    import matplotlib.pyplot as plt

    hooks = list(dict.fromkeys(r["hook"] for r in rows))
    fig, axes = plt.subplots(1, len(hooks), figsize=(5.5 * len(hooks), 3.8), squeeze=False)
    for ax, hook in zip(axes[0], hooks):
        mine = [r for r in rows if r["hook"] == hook]
        for key in dict.fromkeys((r["attribute"], r["target"], r["feature"]) for r in mine):
            curve = [r for r in mine if (r["attribute"], r["target"], r["feature"]) == key]
            ax.plot([r["scale"] for r in curve], [r["target_after"] / r["n"] for r in curve], marker="o",
                    label=f"f{key[2]} → {key[1]}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("clamp value / the feature's largest training activation")
        ax.set_ylabel("fraction now answering the feature's value")
        ax.set_title(f"clamping one feature at {hook}", fontsize=9)
        ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(n: int = 160, seed: int = 2024, steps: int = 400, d_sae: int = 128, k: int = 8, sae_seed: int = 0,
        out="lalm_lens_out/sae_features", hooks=(AUDIO_HOOK, LM_HOOK), scales=CLAMP_SCALES) -> dict:
    """Everything the example prints, as one dict (also `out/summary.json`)."""
    torch.manual_seed(sae_seed)
    out = Path(out)
    model = HookedLALM.from_pretrained("demo", device="cpu")
    items = read_items(write_demo_dataset(out / "items", n=n, seed=seed))
    n_fit = n - max(1, round(0.25 * n))
    fit, test = items[:n_fit], items[n_fit:]
    summary = {"settings": {"n": n, "seed": seed, "steps": steps, "d_sae": d_sae, "k": k, "sae_seed": sae_seed},
               "saes": {}, "features": {}, "clamps": []}
    for hook in hooks:
        positions = "audio" if hook == AUDIO_HOOK else "text"
        shutil.rmtree(out / "sae" / hook, ignore_errors=True)  # the activation store wants an empty folder
        sae, report = train_sae(model, items, hook, positions=positions, d_sae=d_sae, k=k, steps=steps, seed=sae_seed,
                                out=out / "sae" / hook, holdout=(n - n_fit - 0.5) / n, progress=False)
        summary["saes"][hook] = {key: report[key] for key in ("l0", "fvu", "fvu_initial", "dead", "d_sae", "p_answer",
                                                              "delta_p_answer", "delta_loss", "kl")}
        summary["saes"][hook]["positions"] = positions
        per_question = hook != AUDIO_HOOK
        table = attribute_features(item_features(model, sae, fit, hook), fit, item_features(model, sae, test, hook),
                                   test, per_question)
        summary["features"][hook] = table
        summary["clamps"] += clamp_table(model, sae, hook, table, test, scales)
    return summary


def report(summary: dict) -> None:
    for hook, r in summary["saes"].items():
        print(f"SAE at {hook} ({r['positions']} positions, d_sae {r['d_sae']}): L0 {r['l0']:.1f}, "
              f"FVU {r['fvu']:.4f} (initial {r['fvu_initial']:.3f}), dead {r['dead']}/{r['d_sae']}; "
              f"spliced without the error term: ΔP(answer) {r['delta_p_answer']:+.4f} (P {r['p_answer']:.4f}), "
              f"Δloss {r['delta_loss']:+.4f}, KL {r['kl']:.4f}")
    for hook, table in summary["features"].items():
        print(f"\nfeatures at {hook} (held out; AUC of the value vs the other values):")
        for attribute, per_value in table.items():
            for value, e in per_value.items():
                means = ", ".join(f"{v} {m:.2f}" for v, m in e["mean_by_value"].items() if m is not None)
                print(f"  {attribute}={value:<8} f{e['feature']:<4} AUC {e['auc_test']:.3f} (fit {e['auc_fit']:.3f}, "
                      f"n={e['n_test']})  mean: {means}")
    print("\nclamping one feature (held-out clips whose answer is another value; with the error term):")
    for r in summary["clamps"]:
        print(f"  {r['hook']:<24} f{r['feature']:<4} → {r['attribute']}={r['target']:<8} ×{r['scale']:<4g}"
              f"(= {r['value']:.2f}): answer {r['target']} {r['target_before']}/{r['n']} → {r['target_after']}/{r['n']}, "
              f"P {r['p_target_before']:.3f} → {r['p_target_after']:.3f}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=160, help="clips (default 160; the last 25%% held out)")
    p.add_argument("--seed", type=int, default=2024, help="the clips' seed (default 2024)")
    p.add_argument("--steps", type=int, default=400, help="training steps per SAE (default 400)")
    p.add_argument("--d-sae", type=int, default=128, help="latents (default 128)")
    p.add_argument("--k", type=int, default=8, help="active latents per row (default 8)")
    p.add_argument("--out", default="lalm_lens_out/sae_features",
                   help="output folder (default: lalm_lens_out/sae_features, git-ignored)")
    p.add_argument("--figures", help="where the figures go (default: --out)")
    args = p.parse_args()
    torch.set_num_threads(1)
    start = time.time()
    summary = run(args.n, args.seed, args.steps, args.d_sae, args.k, out=args.out)
    report(summary)
    figures = Path(args.figures or args.out)
    figures.mkdir(parents=True, exist_ok=True)
    plot_features(summary["features"], figures / "sae_attribute_features.png")
    plot_clamps(summary["clamps"], figures / "sae_clamp_flips.png")
    summary["seconds"] = round(time.time() - start, 1)
    (Path(args.out) / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\n{summary['seconds']} s; {Path(args.out) / 'summary.json'}, figures in {figures}")


if __name__ == "__main__":
    main()
