"""The LM-dominated case of `trace_speed.py`: fast engine vs one hooked forward per cell, cold and warm.

Shape: LM 8 layers x d_model 256 (gated SiLU MLP, d_mlp 1024, RoPE), vocabulary
1000, 375 audio + 40 text tokens, a small audio encoder (1 layer x 16 wide; its
share of a full forward is measured and printed, <= 5 %). Sweep: token-wise, every
text position x every layer (320 cells), `resid_post` (the default) and
`resid_pre`, corrupted input given (`Given`: its own encoder run).

Timing: each repetition is a fresh process (`--worker STATE`, all started at
once) that builds the model, then times the fast engine's first trace (COLD: what a user running one
trace per process pays), the reference engine, and the fast engine again twice
(WARM), interleaved in that process so both see the same load. Every reference
cell is one identical full forward, so on a busy machine the reference runs the
cells of `REF_LAYERS` only (40 of 320) and its sweep time is scaled by
(320 + 2) / (40 + 2) (the + 2: its clean and corrupted runs). Reported:
medians over processes of wall time and of the process's CPU time (on a shared
machine CPU time is the steadier measure), and the load average.

The exact bound: the reference engine's cost per cell is one full forward F
(encoder + LM + logits at every position). An exact method must still run the
clean and the corrupted forward once (2F), and per cell the suffix the patch can
change: positions p..T-1 from the first block the patch does not settle
(`resid_pre` at l: block l; `resid_post` at l: block l + 1) to the second last,
then the last block's key/value projections at those positions and its full
work at the answer position only, then `ln_final` + unembedding there. A
`resid_pre` cell at layer 0 on a text token, and a `resid_post` cell at the last
layer off the answer position, are the corrupted run: no work. Counted in FLOPs
(matmuls and attention scores/values; the encoder from its measured share):
bound = n_cells * F / (2F + sum of the suffixes).
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
N_AUDIO, N_TEXT, VOCAB, LAYERS, ENC_WIDTH, ENC_LAYERS = 375, 40, 1000, 8, 16, 1
STATES = ("resid_post", "resid_pre")
N_PROCESSES, N_WARM = 1, 1
REF_LAYERS = [4]  # the reference runs these layers' cells (40 of 320) and is scaled: every cell is one forward


def setup(device: str):
    from benchmarks._shapes import build_model, make_inputs

    model = build_model(device, LAYERS, VOCAB, enc_width=ENC_WIDTH, enc_layers=ENC_LAYERS)
    clean, corrupted = make_inputs(N_AUDIO, N_TEXT, device, vocab=VOCAB)
    return model, clean, corrupted, list(range(N_AUDIO, N_AUDIO + N_TEXT))


def timed(fn):
    w, c = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w, time.process_time() - c


def worker(states: str, device: str) -> dict:
    """One fresh process: fast (cold), then reference and fast (warm) interleaved."""
    import warnings

    warnings.filterwarnings("ignore")
    from lalm_lens.tracing import Given, causal_trace

    model, clean, corrupted, text = setup(device)
    kw = dict(answer=17, mode="tokens", states=states, positions=text)
    run = lambda engine: causal_trace(model, clean, Given(corrupted), engine=engine, **kw)  # noqa: E731
    fast, cold_wall, cold_cpu = timed(lambda: run("fast"))
    out = dict(cold_wall=cold_wall, cold_cpu=cold_cpu, ref_wall=[], ref_cpu=[], warm_wall=[], warm_cpu=[])
    for _ in range(N_WARM):
        ref, w, c = timed(lambda: causal_trace(model, clean, Given(corrupted), engine="reference",
                                               **{**kw, "layers": REF_LAYERS}))
        scale = (LAYERS * N_TEXT + 2) / (len(REF_LAYERS) * N_TEXT + 2)
        out["ref_wall"].append(w * scale)
        out["ref_cpu"].append(c * scale)
        for _ in range(2):
            _, w, c = timed(lambda: run("fast"))
            out["warm_wall"].append(w)
            out["warm_cpu"].append(c)
    out["max_diff"] = (fast.p_patched[REF_LAYERS] - ref.p_patched).abs().max().item()
    out["load"] = os.getloadavg()
    return out


def layer_flops(cfg, n_keys: int) -> float:
    """FLOPs of one LM block at one query position attending to `n_keys` keys."""
    d, hd = cfg.d_model, cfg.d_head
    proj = d * hd * (2 * cfg.n_heads + 2 * cfg.n_key_value_heads)  # q, o; k, v
    mlp = d * cfg.d_mlp * (3 if cfg.gated_mlp else 2)
    return 2 * (proj + mlp) + 4 * cfg.n_heads * hd * n_keys


def bound(model, states: str, text: list[int], encoder_share: float) -> tuple[float, float]:
    """(exact bound on the speed-up, reference FLOPs per cell): see the module docstring."""
    cfg, T = model.cfg, N_AUDIO + N_TEXT
    L, final = cfg.n_layers, T - 1
    kv = 2 * 2 * cfg.d_model * cfg.d_head * cfg.n_key_value_heads  # k and v projections at one position
    readout = 2 * cfg.d_model * cfg.d_vocab
    lm = L * sum(layer_flops(cfg, t + 1) for t in range(T)) + T * readout
    full = lm / (1 - encoder_share)
    suffix = 0.0
    for layer in range(L):
        for p in text:
            start = layer if states == "resid_pre" else layer + 1
            if (states == "resid_pre" and layer == 0) or (start == L and p != final):
                continue
            work = readout
            if start < L:
                work += sum(layer_flops(cfg, t + 1) for t in range(p, T)) * (L - 1 - start)
                work += kv * (final - p) + layer_flops(cfg, T)
            suffix += work
    n_cells = L * len(text)
    return n_cells * full / (2 * full + suffix), full


def encoder_share(model, clean) -> float:
    import torch

    with torch.no_grad():
        model(clean)  # warm-up
        enc = statistics.median(timed(lambda: model.encode_audio(clean["input_features"],
                                                                 clean["feature_attention_mask"]))[2] for _ in range(5))
        full = statistics.median(timed(lambda: model(clean))[2] for _ in range(5))
    return enc / full


def main(device: str) -> None:
    model, clean, _, text = setup(device)
    share = encoder_share(model, clean)
    lines = [f"== LM-dominated: {N_AUDIO} audio + {N_TEXT} text tokens, LM {LAYERS} x {model.cfg.d_model}, "
             f"vocab {VOCAB}, encoder {ENC_LAYERS} x {ENC_WIDTH}, token-wise sweep, {LAYERS * N_TEXT} cells, "
             f"torch threads {os.environ.get('OMP_NUM_THREADS', 'default')} ==",
             f"audio encoder: {100 * share:.1f} % of a full forward (CPU time) [target <= 5 %]",
             f"load average before: {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores",
             f"{'states':11s} {'call':5s} {'fast s':>8s} {'ref s':>8s} {'ratio':>7s} {'fast cpu':>9s} {'ref cpu':>8s} "
             f"{'ratio':>7s} {'bound':>6s} {'cpu ratio/bound':>15s}  (s: wall, cpu: process CPU seconds)"]
    print("\n".join(lines), flush=True)
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    procs = {(states, k): subprocess.Popen([sys.executable, __file__, "--worker", states, device], text=True,
                                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=ROOT, env=env)
             for states in STATES for k in range(N_PROCESSES)}  # all at once: a larger share of a busy machine
    outputs = {key: proc.communicate() for key, proc in procs.items()}
    for states in STATES:
        results = []
        for k in range(N_PROCESSES):
            (stdout, stderr), proc = outputs[(states, k)], procs[(states, k)]
            if proc.returncode:
                raise RuntimeError(stderr[-3000:])
            results.append(json.loads(stdout.strip().splitlines()[-1]))
        b, _ = bound(model, states, text, share)

        def med(key):
            return statistics.median(x for r in results for x in (r[key] if isinstance(r[key], list) else [r[key]]))

        for call in ("cold", "warm"):
            fw, rw, fc, rc = med(f"{call}_wall"), med("ref_wall"), med(f"{call}_cpu"), med("ref_cpu")
            line = (f"{states:11s} {call:5s} {fw:8.2f} {rw:8.2f} {rw / fw:6.1f}x {fc:9.2f} {rc:8.2f} {rc / fc:6.1f}x "
                    f"{b:5.1f}x {rc / fc / b:15.2f}")
            print(line, flush=True)
            lines.append(line)
        loads = [r["load"][0] for r in results]
        diff = max(r["max_diff"] for r in results)
        lines.append(f"   ({N_PROCESSES} process(es): cold, reference on {len(REF_LAYERS) * N_TEXT} cells scaled to "
                     f"{LAYERS * N_TEXT}, 2 warm; 1-min load during them "
                     f"{min(loads):.1f}-{max(loads):.1f}; max |Δ p_patched| fast vs reference {diff:.1e})")
        print(lines[-1], flush=True)
    lines.append("target: >= 25x at resid_post, cold")
    out = ROOT / "docs" / "trace_speed_cpu.txt"
    text_before = out.read_text() if out.exists() else ""
    marker = "== LM-dominated"
    kept = text_before.split(marker)[0].rstrip() if marker in text_before else text_before.rstrip()
    out.write_text(kept + "\n\n" + "\n".join(lines) + "\n")


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        sys.path.insert(0, str(ROOT))
        print(json.dumps(worker(sys.argv[2], sys.argv[3])))
    else:
        sys.path.insert(0, str(ROOT))
        main(sys.argv[1] if len(sys.argv) > 1 else "cpu")
