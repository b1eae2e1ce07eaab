"""Steering the `demo` model along a "high − low" pitch direction, with a measured dose-response curve.

Every clip is asked about its pitch. On the first half of the clips, the direction at a hook is the
mean state of the high-pitch clips minus that of the low-pitch clips: at the final position for an
LM hook (`blocks.1/2.hook_resid_post`, where the answer forms), the mean over the audio tokens at
`hook_audio_embeds`. On the held-out low-pitch clips, `alpha · direction` is added (at the final
position, or at every audio token) for each alpha, and we measure P("high") (mean, 95 % bootstrap
CI), which option the model now answers, and, with `steering_effect`, the fraction answering "high"
and its change with a paired bootstrap 95 % CI. alpha = 1 moves a low clip's state by the whole
high − low difference of the means. One item is also decoded with `generate(..., interventions=...)`.

    python examples/steering.py                           # 120 clips, ~1 min on one CPU core
    python examples/steering.py --figures docs/figures    # the README's figure
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from lalm_lens import HookedLALM
from lalm_lens.demo import write_demo_dataset
from lalm_lens.demo.synth import ATTRIBUTES
from lalm_lens.features import AddDirection, steering_effect
from lalm_lens.tracing import read_items
from lalm_lens.tracing.dataset_result import bootstrap_ci
from lalm_lens.tracing.pipeline import answer_token
from sae_features import asked  # examples/ is on the path when a script in it runs

HOOKS = ("hook_audio_embeds", "blocks.1.hook_resid_post", "blocks.2.hook_resid_post")
ALPHAS = (0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
FINAL = [-1]  # the last prompt position of each (unpadded) item: where the demo's answer forms


def positions_for(hook: str):
    return "all" if hook == "hook_audio_embeds" else FINAL


@torch.no_grad()
def mean_state(model, inps, hook: str) -> torch.Tensor:
    """[d]: the mean over inputs of the state at the final position (LM hook) or over the audio tokens."""
    states = []
    for inp in inps:
        x = model.run_with_cache(inp, names_filter=hook)[1][hook]
        states.append(x.reshape(-1, x.shape[-1]).mean(0) if x.dim() == 2 else x[0, -1])
    return torch.stack(states).mean(0)


def direction(model, inps_by_value: dict, hook: str, high: str = "high", low: str = "low") -> torch.Tensor:
    """The "high − low" direction at `hook`: the difference of the two groups' mean states."""
    return mean_state(model, inps_by_value[high], hook) - mean_state(model, inps_by_value[low], hook)


@torch.no_grad()
def dose_response(model, inps, hook: str, d: torch.Tensor, alphas, target: str, options) -> list[dict]:
    """For each alpha: mean P(target) with its bootstrap CI, the answers' counts over `options`, and
    `steering_effect`'s fraction answering `target` with the paired CI of its change."""
    tokens = {o: answer_token(model, inps[0], o)[0] for o in options}
    rows = []
    for alpha in alphas:
        steer = AddDirection(hook, d, alpha, positions=positions_for(hook))
        p, answers = [], []
        for inp in inps:
            logits = model.run_with_hooks(inp, fwd_hooks=steer.hooks(model, inp))[0, -1].float()
            p.append(float(logits.softmax(-1)[tokens[target]]))
            top = int(logits.argmax())
            answers.append(next((o for o, t in tokens.items() if t == top), "other"))
        mean, lo, hi = bootstrap_ci(np.array(p))
        effect = steering_effect(model, [(inp, target) for inp in inps], [steer])
        rows.append({"hook": hook, "alpha": alpha, "n": len(inps), "p_target": float(mean), "p_ci": [float(lo), float(hi)],
                     "answers": {o: answers.count(o) for o in [*options, "other"]},
                     "target_rate": effect["steered_accuracy"], "target_rate_unsteered": effect["accuracy"],
                     "delta": effect["delta"], "delta_ci": list(effect["delta_ci"])})
    return rows


def plot(rows: list[dict], target: str, path: Path) -> None:
    import matplotlib.pyplot as plt

    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 3.8))
    for hook in dict.fromkeys(r["hook"] for r in rows):
        mine = [r for r in rows if r["hook"] == hook]
        a = [r["alpha"] for r in mine]
        left.plot(a, [r["p_target"] for r in mine], marker="o", label=hook)
        left.fill_between(a, [r["p_ci"][0] for r in mine], [r["p_ci"][1] for r in mine], alpha=0.2)
        rate = np.array([r["target_rate"] for r in mine])
        base = np.array([r["target_rate_unsteered"] for r in mine])
        right.plot(a, rate, marker="o", label=hook)
        right.fill_between(a, base + [r["delta_ci"][0] for r in mine], base + [r["delta_ci"][1] for r in mine], alpha=0.2)
    left.set_ylabel(f'mean P("{target}")  (95% bootstrap CI)')
    right.set_ylabel(f'fraction answering "{target}"  (steering_effect CI)')
    for ax in (left, right):
        ax.set_xlabel("alpha (× the high − low difference of means)")
        ax.set_ylim(-0.03, 1.03)
        ax.legend(fontsize=8)
    fig.suptitle("held-out low-pitch clips steered along high − low", fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def run(n: int = 120, seed: int = 2024, hooks=HOOKS, alphas=ALPHAS, out="lalm_lens_out/steering",
        source: str = "low", target: str = "high") -> dict:
    """Everything the example prints, as one dict."""
    model = HookedLALM.from_pretrained("demo", device="cpu")
    items = [asked(it, "pitch") for it in read_items(write_demo_dataset(Path(out) / "items", n=n, seed=seed))]
    options = list(ATTRIBUTES["pitch"]["options"])
    fit, test = items[: n // 2], items[n // 2:]

    def prepared(its, value):
        return [model.prepare(it.audio, it.question, answer_prefix=it.answer_prefix, options=it.options)
                for it in its if it.answer == value]

    by_value = {v: prepared(fit, v) for v in (source, target)}
    held_out = prepared(test, source)
    summary = {"settings": {"n": n, "seed": seed, "alphas": list(alphas), "source": source, "target": target},
               "n_fit": {v: len(x) for v, x in by_value.items()}, "n_test": len(held_out), "rows": [], "generate": {}}
    for hook in hooks:
        d = direction(model, by_value, hook, high=target, low=source)
        summary["rows"] += dose_response(model, held_out, hook, d, alphas, target, options)
        if hook == hooks[-1]:  # what steering changes in the answer text, for one held-out clip
            for alpha in (0.0, 1.0):
                steer = AddDirection(hook, d, alpha, positions=positions_for(hook))
                summary["generate"][f"{hook} alpha={alpha:g}"] = model.generate(held_out[0], max_new_tokens=1,
                                                                                interventions=[steer])
    return summary


def report(summary: dict) -> None:
    s = summary["settings"]
    print(f"direction {s['target']} − {s['source']} from {summary['n_fit']} fit clips; "
          f"{summary['n_test']} held-out {s['source']}-pitch clips steered")
    for r in summary["rows"]:
        answers = ", ".join(f"{o} {c}" for o, c in r["answers"].items() if c)
        print(f"  {r['hook']:<24} alpha {r['alpha']:<5g} P({s['target']}) {r['p_target']:.3f} "
              f"[{r['p_ci'][0]:.3f}, {r['p_ci'][1]:.3f}]  answering {s['target']} {r['target_rate']:.2f} "
              f"(Δ {r['delta']:+.2f} [{r['delta_ci'][0]:+.2f}, {r['delta_ci'][1]:+.2f}])  answers: {answers}")
    for key, text in summary["generate"].items():
        print(f"  generate, {key}: {text!r}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=120, help="clips (default 120; the second half held out)")
    p.add_argument("--seed", type=int, default=2024, help="the clips' seed (default 2024)")
    p.add_argument("--out", default="lalm_lens_out/steering",
                   help="output folder (default: lalm_lens_out/steering, git-ignored)")
    p.add_argument("--figures", help="where the figure goes (default: --out)")
    args = p.parse_args()
    torch.set_num_threads(1)
    start = time.time()
    summary = run(args.n, args.seed, out=args.out)
    report(summary)
    figures = Path(args.figures or args.out)
    figures.mkdir(parents=True, exist_ok=True)
    plot(summary["rows"], summary["settings"]["target"], figures / "steer_dose_response.png")
    summary["seconds"] = round(time.time() - start, 1)
    (Path(args.out) / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"\n{summary['seconds']} s; {Path(args.out) / 'summary.json'}, figure in {figures}")


if __name__ == "__main__":
    main()
