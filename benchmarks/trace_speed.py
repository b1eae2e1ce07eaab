"""Causal-trace speed: TransformerLens patching vs a run_with_hooks loop vs our fast engine.

Same random LALM (Whisper-style encoder 4 x 256, LM 8 layers x 256), same
inputs, one process. Cases: LALM-shaped (375 audio tokens then 40 text tokens)
and short audio (50 audio + 40 text). Sweeps: token-wise residual (resid_pre at
every text position x every layer) and layers mode (all text positions at once,
per layer). Prints seconds, speed-ups, our time over the FLOP lower bound (the
suffix work alone, at the measured per-token-layer cost of a plain LM forward),
TransformerLens's LM work over the least any exact method does (which caps the
speed-up but for batching and unused logits), and peak memory against one
forward with a full cache.
Targets on a 2-core CPU: token-wise >= 20x TransformerLens on the LALM-shaped
case, >= 5x on the short case, layers mode >= 5x, peak memory <= 2x. The small-
vocabulary case (vocab 1000: full logits are cheap, so the baseline is not
inflated) compares the token-wise sweep with one forward per cell: target >= 25x.
A last case shows layers mode on a 32-layer LM (the speed-up grows with depth).

The LM-dominated case (`--only "LM-dominated"`, `lm_dominated.py`): the same LM
with vocabulary 1000 behind a small audio encoder (its forward <= 5 % of a full
forward, measured and printed), the token-wise sweep over all 40 text positions
against one hooked forward per cell, cold (the first trace in a fresh process)
and warm, for `resid_post` and `resid_pre`, with the ratio to the exact bound.

    python benchmarks/trace_speed.py [--device cuda] [--only CASE]
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import warnings  # noqa: E402

import pandas as pd  # noqa: E402
import torch  # noqa: E402
from transformer_lens import patching  # noqa: E402

from benchmarks._measure import PeakRSS, best_time, mib  # noqa: E402
from benchmarks._shapes import D, LAYERS, VOCAB, build_model, make_inputs  # noqa: E402

warnings.filterwarnings("ignore", message=".*ill-posed")  # random weights: the checks fail, the timing holds
from lalm_lens.tracing import Given, causal_trace  # noqa: E402

def sweep(model, clean, corrupted, mode: str, answer: int, text: list[int]):
    """{method: seconds} for one sweep, and the engine's peak memory vs one cached forward."""
    T = clean["input_ids"].shape[1]
    final = T - 1

    def metric(logits):
        return logits[0, final].float().softmax(-1)[answer]

    def tl():
        with torch.no_grad():
            _, cache = model.run_with_cache(clean)
            view = model.with_audio(corrupted)
            if mode == "tokens":
                cells = pd.DataFrame([(l, p) for l in range(model.cfg.n_layers) for p in text], columns=["layer", "pos"])
                return patching.get_act_patch_resid_pre(view, corrupted["input_ids"], cache, metric,
                                                        index_axis_names=None, index_df=cells)

            def setter(act, index, clean_act):
                act[:, text] = clean_act[:, text]
                return act

            return patching.generic_activation_patch(view, corrupted["input_ids"], cache, metric, setter, "resid_pre",
                                                     index_axis_names=("layer",))

    kw = dict(answer=answer, mode=mode, states="resid_pre", positions=text)
    runs = {
        "transformer_lens.patching": tl,
        "run_with_hooks loop": lambda: causal_trace(model, clean, Given(corrupted), engine="reference", **kw),
        "lalm-lens fast engine": lambda: causal_trace(model, clean, Given(corrupted), engine="fast", **kw),
    }
    import tqdm as _tqdm  # silence TL's per-cell progress bar
    from functools import partialmethod

    _tqdm.tqdm.__init__ = partialmethod(_tqdm.tqdm.__init__, disable=True)
    times, outputs = {}, {}
    for name, fn in runs.items():  # best of 3 after a warm-up; the token-wise baselines (minutes) once
        once = mode == "tokens" and name != "lalm-lens fast engine"
        times[name] = best_time(lambda: outputs.__setitem__(name, fn()), repeat=1 if once else 3, warmup=int(not once))
    exact = outputs["lalm-lens fast engine"].p_patched.flatten().float()
    ref = outputs["run_with_hooks loop"].p_patched.flatten().float()
    tl_values = outputs["transformer_lens.patching"].flatten().float().cpu()
    def peak(fn) -> int:
        """Peak memory added by `fn`: CUDA allocations on a GPU, resident memory on the CPU."""
        if clean["input_ids"].is_cuda:
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            base = torch.cuda.memory_allocated()
            fn()
            return torch.cuda.max_memory_allocated() - base
        with PeakRSS() as mem:
            fn()
        return mem.added

    engine_peak = peak(runs["lalm-lens fast engine"])
    with torch.no_grad():
        cache_peak = peak(lambda: model.run_with_cache(clean))
    diffs = ((exact - ref).abs().max().item(), (exact - tl_values).abs().max().item())
    return times, diffs, engine_peak, cache_peak


def suffix_units(T: int, L: int, mode: str, text: list[int]) -> int:
    """LM token x layer units an exact method must run per cell, beyond the clean and corrupted runs.

    A cell restoring `resid_pre` at layer 0 on text tokens restores the embeddings, which the
    corruption never changes: no work. Otherwise the suffix from the first patched position runs
    from the patched layer, and the last layer is needed at the answer position only.
    """
    cells = [(l, [p]) for l in range(L) for p in text] if mode == "tokens" else [(l, text) for l in range(L)]
    return sum((T - min(ps)) * (L - 1 - l) + 1 for l, ps in cells if l > 0)


def lower_bound_seconds(model, corrupted, mode: str, text: list[int]) -> tuple[float, float]:
    """(seconds for the suffix work alone at the per-unit cost of a plain LM forward,
    TransformerLens's LM work over the least an exact method does: the clean and corrupted runs plus suffixes)."""
    T, L = corrupted["input_ids"].shape[1], model.cfg.n_layers
    with torch.no_grad():
        audio = model.encode_audio(corrupted["input_features"], corrupted["feature_attention_mask"])
        lm_only = dict(input_ids=corrupted["input_ids"], audio_embeds=audio)
        per_unit = best_time(lambda: model(lm_only), repeat=5) / (T * L)
    units = suffix_units(T, L, mode, text)
    n_cells = L * (len(text) if mode == "tokens" else 1)
    return units * per_unit, (n_cells + 1) * T * L / (2 * T * L + units)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", help="run one case (e.g. 'small vocabulary')")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}")
    answer = 17
    targets = {("LALM-shaped", "tokens"): 20, ("short audio", "tokens"): 5, ("LALM-shaped", "layers"): 5,
               ("short audio", "layers"): 5}
    loop_targets = {("small vocabulary", "tokens"): 25}  # vs one forward per cell (the run_with_hooks loop)
    cases = [("LALM-shaped", 375, LAYERS, ("tokens", "layers"), VOCAB),
             ("short audio", 50, LAYERS, ("tokens", "layers"), VOCAB),
             ("small vocabulary", 375, LAYERS, ("tokens",), 1000),
             ("deeper LM, 32 layers (not a target; how layers mode scales)", 375, 32, ("layers",), VOCAB)]
    if args.only:
        cases = [c for c in cases if c[0] == args.only]
    if not args.only or args.only == "LM-dominated":
        from benchmarks.lm_dominated import main as lm_dominated

        lm_dominated(args.device)
    for case, n_audio, n_layers, modes, vocab in cases:
        model = build_model(args.device, n_layers, vocab)
        clean, corrupted = make_inputs(n_audio, 40, args.device, vocab=vocab)
        text = list(range(n_audio, n_audio + 40))
        for mode in modes:
            times, diff, engine_peak, cache_peak = sweep(model, clean, corrupted, mode, answer, text)
            bound, work_ratio = lower_bound_seconds(model, corrupted, mode, text)
            n_cells = n_layers * (len(text) if mode == "tokens" else 1)
            tl = times["transformer_lens.patching"]
            print(f"\n== {case}: {n_audio} audio + 40 text tokens, LM {n_layers} x {D}, vocab {vocab}, {mode} sweep, "
                  f"{n_cells} cells ==")
            print(f"{'method':28s} {'seconds':>9s} {'speed-up vs TL':>15s}")
            for name, sec in times.items():
                print(f"{name:28s} {sec:9.3f} {tl / sec:14.1f}x")
            ours = times["lalm-lens fast engine"]
            print(f"FLOP lower bound (the suffix work alone): {bound:.3f} s; ours / bound = {ours / bound:.1f}")
            print(f"max |Δ p_patched| fast vs loop: {diff[0]:.1e}, fast vs TransformerLens: {diff[1]:.1e}")
            print(f"peak memory: engine {mib(engine_peak)}, one forward with full cache {mib(cache_peak)} "
                  f"-> {engine_peak / max(cache_peak, 1):.2f}x [target <= 2x]")
            target = targets.get((case, mode))
            verdict = f" [target >= {target}x: {'met' if tl / ours >= target else 'NOT met'}]" if target else ""
            print(f"speed-up vs TransformerLens {tl / ours:.1f}x{verdict}")
            print(f"LM work of TransformerLens ({n_cells} + 1 forwards) over the least an exact method does "
                  f"(clean + corrupted runs + suffixes): {work_ratio:.1f}x; beyond it only from batching and "
                  f"skipping unused logits")
            loop = times["run_with_hooks loop"]
            target = loop_targets.get((case, mode))
            verdict = f" [target >= {target}x: {'met' if loop / ours >= target else 'NOT met'}]" if target else ""
            print(f"speed-up vs one forward per cell (run_with_hooks loop) {loop / ours:.1f}x{verdict}")


if __name__ == "__main__":
    main()
