"""Memory of long Music Flamingo clips: windows, audio tokens, the LM attention mask and the audio encoder.

    python examples/long_clip_memory.py [--minutes 1 5 10 20] [--encoder-windows 1 2]

Each measurement runs in a fresh subprocess and reports its peak resident memory
above the process's baseline (CPU, float32 unless stated). Counts come from the
Music Flamingo processor's rules (30 s windows, 750 audio vectors each, at most
40 windows = 1200 s); the encoder is one block at the released width (1280, 20
heads, MLP 5120) with random weights, since activations, not weights, grow
with the clip (blocks run one after another, so more blocks add weights only).
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import subprocess
import sys

TEXT_TOKENS = 60  # the chat template and a short question around the audio
WINDOW_SECONDS, TOKENS_PER_WINDOW = 30, 750


def rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def mask_peak(n: int, int64_delta: bool) -> dict:
    """Peak of building the additive LM mask for `n` positions (the pre-fix rule builds an int64 [n, n] first)."""
    import torch

    from lalm_lens.components.masks import additive, allowed_keys

    base = rss_mb()
    idx = torch.arange(n)
    if int64_delta:  # the rule before this change: delta = q - k as int64, then compare
        allowed = (idx[:, None] - idx[None, :]) >= 0
    else:
        allowed = allowed_keys(idx, idx, causal=True)
    bias = additive(allowed, torch.bfloat16)
    del allowed
    return {"peak_mb": rss_mb() - base, "bias_mb": bias.numel() * bias.element_size() / 2**20}


def encoder_peak(windows: int) -> dict:
    """Peak of one released-width encoder block (plus stem, pool and norm) over `windows` full windows."""
    import torch

    from lalm_lens.components.encoders import build_encoder
    from lalm_lens.config import EncoderConfig

    torch.set_num_threads(1)
    cfg = EncoderConfig(d_model=1280, d_head=64, n_heads=20, d_mlp=5120, n_layers=1, n_ctx=1500, d_vocab=-1,
                        act_fn="gelu", normalization_type="LN", positional_embedding_type="sinusoidal",
                        causal=False, kind="padded", pool=2, final_norm=True, eps=1e-5)
    enc = build_encoder(cfg).eval()
    with torch.no_grad():
        for p in enc.parameters():
            p.normal_(0, 0.02)
    features = torch.randn(windows, 128, 3000)
    mask = torch.ones(windows, 3000, dtype=torch.bool)
    mask[-1, 1000:] = False  # a partial last window, as a real clip has
    base = rss_mb()
    with torch.no_grad():
        out = enc(features, mask)
    return {"peak_mb": rss_mb() - base, "out_shape": list(out.hidden.shape)}


def run(kind: str, value: int, extra: str = "") -> dict:
    code = (f"import json, examples.long_clip_memory as m; "
            f"print(json.dumps(m.{kind}({value}{extra})))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, nargs="+", default=[1, 5, 10, 20])
    ap.add_argument("--measure-up-to", type=float, default=10, help="compute, not measure, the mask beyond this")
    ap.add_argument("--encoder-windows", type=int, nargs="+", default=[1, 2])
    args = ap.parse_args(argv)
    print("| minutes | windows | audio tokens | LM positions | mask bf16 [N,N] | int64 delta (before) | "
          "mask peak, before | mask peak, now |")
    print("|---|---|---|---|---|---|---|---|")
    for minutes in args.minutes:
        windows = min(40, math.ceil(minutes * 60 / WINDOW_SECONDS))
        n = windows * TOKENS_PER_WINDOW + TEXT_TOKENS
        gib = lambda b: f"{b / 2**30:.2f} GiB"  # noqa: E731
        if minutes <= args.measure_up_to:
            before = f"{run('mask_peak', n, ', True')['peak_mb'] / 1024:.2f} GiB"
            now = f"{run('mask_peak', n, ', False')['peak_mb'] / 1024:.2f} GiB"
        else:
            before = now = "not run"
        print(f"| {minutes:g} | {windows} | {windows * TOKENS_PER_WINDOW} | {n} | {gib(2 * n * n)} | {gib(8 * n * n)} | "
              f"{before} | {now} |")
    for w in args.encoder_windows:
        r = run("encoder_peak", w)
        print(f"encoder, one block at width 1280, {w} window(s): peak +{r['peak_mb']:.0f} MB, output {r['out_shape']}")


if __name__ == "__main__":
    main()
