"""What the option tokens carry when the answer is a letter: the `demo-letters` model, traced token-wise.

The model hears a sound, reads shuffled options ("Options: A. high B. low C. middle. Answer with the
letter.") and answers the letter ("The answer is" -> "B"), so the heard attribute must be bound to a
place in the prompt. Over held-out items (silence corruption), restore one position at one layer at a
time and average the recovery rate, with 95% bootstrap CIs, at: the heard option's word, the other
option words, the option letters, the final token. Writes the records, `binding.json` and
`binding.png`, the usual token-group figure and one item's heatmap.

    python examples/letters_binding.py                 # 60 items, ~2 min on 2 CPU cores
    python examples/letters_binding.py --n 200   # into lalm_lens_out/letters_binding
"""

import argparse
import json
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from lalm_lens import HookedLALM
from lalm_lens.demo import write_demo_dataset
from lalm_lens.demo.synth import LETTERS
from lalm_lens.tracing import causal_trace, plots, read_items, trace_dataset
from lalm_lens.tracing.dataset_result import bootstrap_ci

ROLES = ("heard option word", "other option words", "option letters", "final token")


def num(x: float) -> str:
    return f"{x:.2f}".replace("-0.00", "0.00")


def role_curves(record: dict) -> dict[str, np.ndarray]:
    """Mean RR by layer over the positions of each role in one token-wise record."""
    rr = np.asarray(record["recovery"], dtype=float)  # [layers, positions]
    labels = record["token_labels"]  # one per traced position
    groups = record["groups"]
    heard = record["options"][LETTERS.index(record["answer"])]
    in_list = [g == "object" or (lab.strip() == LETTERS[0] and g == "early_prompt") for lab, g in zip(labels, groups)]
    roles = {
        "heard option word": [i for i, lab in enumerate(labels) if in_list[i] and lab.strip() == heard],
        "other option words": [i for i, lab in enumerate(labels)
                               if in_list[i] and lab.strip() in record["options"] and lab.strip() != heard],
        "option letters": [i for i, lab in enumerate(labels) if in_list[i] and lab.strip() in LETTERS],
        "final token": [i for i, g in enumerate(groups) if g == "final"],
    }
    return {role: rr[:, cols].mean(-1) for role, cols in roles.items() if cols}


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=60, help="held-out items (default: 60)")
    p.add_argument("--out", default="lalm_lens_out/letters_binding",
                   help="output folder (default: lalm_lens_out/letters_binding, git-ignored)")
    args = p.parse_args()
    out = Path(args.out)
    model = HookedLALM.from_pretrained("demo-letters", device="cpu")
    items = read_items(write_demo_dataset(out / "items", n=args.n, task="letters"))
    result = trace_dataset(model, items, out=out / "records.jsonl", mode="tokens")
    print(result.summary())
    per_role = {role: [] for role in ROLES}
    for record in result.kept:
        for role, curve in role_curves(record).items():
            per_role[role].append(curve)
    summary = {"n_items": len(result.kept), "counts": result.counts(), "roles": {}}
    _, ax = plt.subplots(figsize=(6.4, 4))
    for role, curves in per_role.items():
        if not curves:
            continue
        values = np.stack(curves)  # [items, layers]
        mean, lo, hi = bootstrap_ci(values)
        summary["roles"][role] = dict(mean=mean.round(4).tolist(), ci_low=lo.round(4).tolist(),
                                      ci_high=hi.round(4).tolist())
        layers = np.arange(len(mean))
        ax.plot(layers, mean, marker="o", label=role)
        ax.fill_between(layers, lo, hi, alpha=0.2)
        print(f"{role:>20}: mean RR by layer " + ", ".join(f"{num(m)} [{num(a)}, {num(b)}]" for m, a, b in zip(mean, lo, hi)))
    ax.set_xlabel("layer")
    ax.set_ylabel("recovery rate (RR)")
    ax.set_title(f"demo-letters · restoring one position (resid_post) · Silence\n"
                 f"mean over n = {len(result.kept)} items, bands: 95% CI", fontsize=9)
    ax.legend(fontsize=8)
    plots.save(ax, out / "binding.png")
    (out / "binding.json").write_text(json.dumps(summary, indent=1))
    plots.save(result.plot(), out / "groups.png")
    first = next(i for i in items if i.id == result.kept[0]["id"])
    inp = model.prepare(first.audio, first.question, answer_prefix=first.answer_prefix, options=first.options)
    plots.save(causal_trace(model, inp, answer=first.answer, mode="tokens").plot(hide_template=True),
               out / "heatmap_first_item.png")
    print(f"figures and binding.json in {out}")


if __name__ == "__main__":
    main()
