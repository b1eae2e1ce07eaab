"""What a study item costs: the token-wise and layer-wise sweeps of one item on a 7B-shaped LALM.

A random-weight LALM with Qwen2-Audio-7B widths (LM 32 x 4096, 32 heads, vocab
156032; encoder 32 x 1280) in bfloat16 on a GPU, or a shape that fits on a CPU
(`--shape cpu`, float32). An item is a 10 s clip (250 audio tokens) and a
SAKURA-style question (~50 text tokens). Prints, per item: seconds of our
engine for the token-wise sweep (every layer x every text position) and the
layer-wise sweep; the same cells through `transformer_lens.patching` (estimated
from a timed sample of cells); peak GPU memory; and items per hour with 1 and N
processes (one per GPU, or one CPU thread each), with the scaling efficiency.
Targets on one H100: token-wise <= 3 s per item, layer-wise <= 0.5 s, >= 90 %
scaling from 1 to N processes.

    python benchmarks/study_throughput.py                       # 7B shape on cuda
    python benchmarks/study_throughput.py --shape cpu --processes 2
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import warnings  # noqa: E402

import numpy as np  # noqa: E402
import torch  # noqa: E402

warnings.filterwarnings("ignore", message=".*ill-posed")  # random weights: the checks fail, the timing holds

SHAPES = {  # LM layers, width, heads, kv heads, d_mlp, vocab; encoder layers, width, heads
    "7b": dict(lm=(32, 4096, 32, 32, 11008, 156032), enc=(32, 1280, 20), dtype=torch.bfloat16),
    "cpu": dict(lm=(8, 512, 8, 8, 1376, 8192), enc=(4, 256, 4), dtype=torch.float32),
}
N_TEXT, SECONDS = 50, 10.0


def build(shape: str, device: str):
    from lalm_lens import BlockConfig, EncoderConfig, HookedLALM, LALMConfig, ProjectorConfig

    (L, d, h, kv, mlp, vocab), (EL, ed, eh), dtype = SHAPES[shape]["lm"], SHAPES[shape]["enc"], SHAPES[shape]["dtype"]
    enc = EncoderConfig(d_model=ed, d_head=ed // eh, n_heads=eh, n_layers=EL, n_ctx=1500, d_mlp=4 * ed, act_fn="gelu",
                        normalization_type="LN", positional_embedding_type="learned", causal=False, pool=2,
                        final_norm=True, n_mels=128, n_frames=3000, kind="padded", device=device, dtype=dtype)
    lm = BlockConfig(d_model=d, d_head=d // h, n_heads=h, n_key_value_heads=kv, n_layers=L, n_ctx=8192, d_mlp=mlp,
                     d_vocab=vocab, act_fn="silu", gated_mlp=True, normalization_type="RMS",
                     positional_embedding_type="rotary", eps=1e-6, device=device, dtype=dtype)
    config = LALMConfig(family="qwen2_audio", lm=lm, encoder=enc, projector=ProjectorConfig("linear", ed, d),
                        audio_token_id=vocab - 1)
    with torch.device("meta"):
        model = HookedLALM(config)
    model.to_empty(device=device)
    model.reset_buffers()
    gen = torch.Generator(device="cpu").manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():  # 1/sqrt(fan_in) weights, unit norms: realistic activations
            if p.ndim == 1:
                p.fill_(1.0 if name.endswith(".w") else 0.0)
            else:
                p.copy_((torch.randn(p.shape, generator=gen) / p[0].numel() ** 0.5).to(p.dtype))
    return model.eval()


def item(model, seed: int):
    """A clean input (10 s of noise-like audio) and its silence, as model tensors."""
    from transformers import WhisperFeatureExtractor

    rng = np.random.default_rng(seed)
    wave = (0.1 * rng.standard_normal(int(SECONDS * 16000))).astype(np.float32)
    fe = WhisperFeatureExtractor(feature_size=128)
    n_audio = ((int(SECONDS * 100) - 1) // 2 + 1 - 2) // 2 + 1
    vocab = model.cfg.d_vocab
    text = rng.integers(0, vocab - 1, N_TEXT + 15).tolist()
    ids = torch.tensor([text[:15] + [vocab - 1] * n_audio + text[15:]], device=model.device)

    def tensors(w):
        f = fe(w, sampling_rate=16000, return_attention_mask=True, return_tensors="pt")
        return dict(input_ids=ids, input_features=f["input_features"].to(model.device, model.cfg.dtype),
                    feature_attention_mask=f["attention_mask"].to(model.device))

    return tensors(wave), tensors(np.zeros_like(wave)), list(range(15 + n_audio, ids.shape[1]))


def sync(model):
    if model.device.type == "cuda":
        torch.cuda.synchronize()


def time_item(model, clean, corrupted, positions, mode: str) -> float:
    from lalm_lens.tracing import Given, causal_trace

    sync(model)
    start = time.perf_counter()
    causal_trace(model, clean, Given(corrupted), answer=7, mode=mode, states="resid_pre", positions=positions)
    sync(model)
    return time.perf_counter() - start


def tl_estimate(model, clean, corrupted, positions, n_cells_total: int, sample: int) -> float:
    """`transformer_lens.patching` on `sample` of the token-wise cells, scaled to all of them."""
    import pandas as pd
    import tqdm as _tqdm
    from functools import partialmethod

    from transformer_lens import patching

    _tqdm.tqdm.__init__ = partialmethod(_tqdm.tqdm.__init__, disable=True)
    final = clean["input_ids"].shape[1] - 1
    cells = pd.DataFrame([(l, p) for l in range(model.cfg.n_layers) for p in positions], columns=["layer", "pos"])
    cells = cells.sample(n=min(sample, len(cells)), random_state=0)
    with torch.no_grad():
        _, cache = model.run_with_cache(clean)
        view = model.with_audio(corrupted)
        sync(model)
        start = time.perf_counter()
        patching.get_act_patch_resid_pre(view, corrupted["input_ids"], cache,
                                         lambda logits: logits[0, final].float().softmax(-1)[7],
                                         index_axis_names=None, index_df=cells)
        sync(model)
    return (time.perf_counter() - start) / len(cells) * n_cells_total


def worker(rank: int, args, results):
    """One process of the scaling run: its own GPU (or one CPU thread), `args.items` token-wise items."""
    device = f"cuda:{rank}" if args.device == "cuda" else "cpu"
    if device == "cpu":
        torch.set_num_threads(1)
    model = build(args.shape, device)
    clean, corrupted, positions = item(model, 0)
    time_item(model, clean, corrupted, positions, "tokens")  # warm-up
    start = time.perf_counter()
    for k in range(args.items):
        clean, corrupted, positions = item(model, k + 1)
        time_item(model, clean, corrupted, positions, "tokens")
    results[rank] = args.items / (time.perf_counter() - start) * 3600


def scaling(args, n: int) -> float:
    """Items per hour with `n` processes together."""
    import torch.multiprocessing as mp

    results = mp.Manager().dict()
    mp.spawn(worker, args=(args, results), nprocs=n, join=True)
    return sum(results.values())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--shape", choices=sorted(SHAPES), help="default: 7b on cuda, cpu on the CPU")
    parser.add_argument("--processes", type=int, default=torch.cuda.device_count() or 2)
    parser.add_argument("--items", type=int, default=3, help="items per process in the scaling run")
    parser.add_argument("--tl-sample", type=int, default=24, help="token-wise cells timed through TransformerLens")
    args = parser.parse_args()
    args.shape = args.shape or ("7b" if args.device == "cuda" else "cpu")
    name = torch.cuda.get_device_name(0) if args.device == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"torch {torch.__version__}; {name}; shape {args.shape} ({SHAPES[args.shape]['dtype']})")
    model = build(args.shape, args.device)
    clean, corrupted, positions = item(model, 0)
    n_cells = model.cfg.n_layers * len(positions)
    print(f"item: {int(SECONDS)} s clip, {clean['input_ids'].shape[1]} tokens ({len(positions)} text positions); "
          f"token-wise {n_cells} cells, layer-wise {model.cfg.n_layers} cells")
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for mode in ("layers", "tokens"):
        time_item(model, clean, corrupted, positions, mode)  # warm-up
    layers = min(time_item(model, clean, corrupted, positions, "layers") for _ in range(3))
    tokens = min(time_item(model, clean, corrupted, positions, "tokens") for _ in range(2))
    peak = torch.cuda.max_memory_allocated() / 2**30 if args.device == "cuda" else float("nan")
    tl = tl_estimate(model, clean, corrupted, positions, n_cells, args.tl_sample)
    print(f"\n{'per item':32s} {'ours (s)':>10s} {'TransformerLens (s)':>20s} {'speed-up':>9s}")
    print(f"{'token-wise sweep':32s} {tokens:10.2f} {tl:20.1f} {tl / tokens:8.1f}x")
    print(f"{'layer-wise sweep':32s} {layers:10.2f} {'':>20s}")
    print(f"peak GPU memory: {peak:.1f} GiB" if args.device == "cuda" else "peak GPU memory: n/a (CPU run)")
    if args.device == "cuda" and args.shape == "7b":
        print(f"targets (H100): token-wise <= 3 s [{'met' if tokens <= 3 else 'NOT met'}], "
              f"layer-wise <= 0.5 s [{'met' if layers <= 0.5 else 'NOT met'}]")
    del model
    one = scaling(args, 1)
    many = scaling(args, args.processes)
    print(f"\nitems per hour (token-wise): 1 process {one:.0f}; {args.processes} processes {many:.0f}; "
          f"scaling efficiency {many / (args.processes * one):.0%} [target >= 90%]")


if __name__ == "__main__":
    main()
