"""The analyses' speed: the fast engine against one forward per cell (the reference engine).

Same random LALM as `trace_speed.py` (encoder 4 x 256, LM 8 x 256, vocabulary
1000), 375 audio tokens (15 s) + 40 text tokens. Sweeps: audio positions in
0.5 s windows at each layer (30 windows x 8 layers: the suffix starts inside
the audio), and one head's z at each layer (4 heads x 8 layers) restored at
every position and at the final one. Prints seconds, speed-ups, and the
largest difference between the engines.

    python benchmarks/analysis_speed.py [--device cuda]
"""

from __future__ import annotations

import argparse
import os
import sys
import warnings
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
warnings.filterwarnings("ignore", message=".*ill-posed")  # random weights: the checks fail, the timing holds

import torch  # noqa: E402

from benchmarks._measure import best_time  # noqa: E402
from benchmarks._shapes import build_model, make_inputs  # noqa: E402
from lalm_lens.inputs.prepared import PreparedInput  # noqa: E402
from lalm_lens.tracing import Given, audio_time_trace, head_trace  # noqa: E402

VOCAB, N_AUDIO, N_TEXT = 1000, 375, 40


def prepared(tensors: dict, seconds: float) -> PreparedInput:
    """The benchmark's tensors with what an audio-time sweep reads: the waveform and each audio token's time."""
    import numpy as np

    n = tensors["input_ids"].shape[1]
    return PreparedInput(tensors=tensors, waveforms=[np.zeros(int(seconds * 16000), dtype=np.float32)],
                         sampling_rate=16000, texts=[""], audio_positions=[torch.arange(N_AUDIO)],
                         str_tokens=[[str(i) for i in range(n)]],
                         meta={"audio_seconds": [torch.arange(N_AUDIO, dtype=torch.float64) * 0.04]})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}")
    model = build_model(args.device, 8, VOCAB)
    clean, corrupted = make_inputs(N_AUDIO, N_TEXT, args.device, vocab=VOCAB)
    item = prepared(clean, N_AUDIO * 0.04)
    sweeps = {
        "audio positions in 0.5 s windows (240 cells)": lambda engine: audio_time_trace(
            model, item, Given(corrupted), answer=17, window_seconds=0.5, engine=engine),
        "one head's z at every position (32 cells)": lambda engine: head_trace(
            model, item, Given(corrupted), answer=17, positions="all", engine=engine),
        "one head's z at the final position (32 cells)": lambda engine: head_trace(
            model, item, Given(corrupted), answer=17, positions="final", engine=engine),
    }
    print(f"\n{'sweep':48s} {'fast (s)':>9s} {'one forward per cell (s)':>25s} {'speed-up':>9s} {'max |Δ|':>8s}")
    for name, run in sweeps.items():
        out = {}
        fast = best_time(lambda: out.__setitem__("fast", run("fast")), repeat=3)
        ref = best_time(lambda: out.__setitem__("reference", run("reference")), repeat=1, warmup=0)
        delta = (out["fast"].patched - out["reference"].patched).abs().max().item()
        print(f"{name:48s} {fast:9.2f} {ref:25.2f} {ref / fast:8.1f}x {delta:8.1e}")


if __name__ == "__main__":
    main()
