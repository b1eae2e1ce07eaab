"""Forward overhead of HookedLALM against the Hugging Face original, and loading memory.

1. Same small Qwen2-Audio-shaped model (encoder 4 x 256, LM 4 x 256, 30 s of
   audio), same input, one process: best-of-N forward time and peak memory of
   the HF model and of ours (no hooks, and with a full `run_with_cache`).
   Target: ours / HF <= 1.2 without hooks.
2. Peak resident memory of `HookedLALM.from_pretrained` above the imports, as a
   multiple of the loaded weights, in a fresh subprocess, on a random checkpoint
   with a released model's widths and vocabulary (Qwen2-Audio: embedding
   156032 x 4096; 2 LM and 2 encoder layers; bf16 shards), loaded in float32
   and in bf16. Target <= 1.3 (a second copy of the weights reads ~2).

    python benchmarks/forward_overhead.py [--device cuda] [--skip-load] [--skip-forward]
        [--load-shapes qwen2_audio,voxtral_mini] [--load-dtypes float32,bfloat16]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks._measure import PeakRSS, best_time, mib  # noqa: E402


def small_checkpoint(folder: Path, d: int = 256, layers: int = 4, vocab: int = 4096, lm_layers: int = 4) -> Path:
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    from lalm_lens.toy import qwen2_audio_processor

    config = Qwen2AudioConfig(
        audio_config=dict(model_type="qwen2_audio_encoder", d_model=d, encoder_layers=layers,
                          encoder_attention_heads=d // 64, encoder_ffn_dim=4 * d, num_mel_bins=128,
                          max_source_positions=1500),
        text_config=dict(model_type="qwen2", vocab_size=vocab, hidden_size=d, intermediate_size=4 * d,
                         num_hidden_layers=lm_layers, num_attention_heads=d // 64, num_key_value_heads=d // 64),
        audio_token_index=vocab - 1,
    )
    torch.manual_seed(0)
    Qwen2AudioForConditionalGeneration(config).save_pretrained(folder)
    words = "Describe the audio in detail".split()
    qwen2_audio_processor(words, vocab_size=vocab, audio_token_id=vocab - 1).save_pretrained(folder)
    return folder


def forward_comparison(device: str) -> None:
    from transformers import Qwen2AudioForConditionalGeneration

    from lalm_lens import HookedLALM

    with tempfile.TemporaryDirectory() as tmp:
        folder = small_checkpoint(Path(tmp))
        hf = Qwen2AudioForConditionalGeneration.from_pretrained(folder).to(device).eval()
        ours = HookedLALM.from_pretrained(folder, device=device, dtype=torch.float32)
    wave = np.random.default_rng(0).standard_normal(30 * 16000).astype(np.float32) * 0.1
    inp = ours.prepare(wave, "Describe the audio in detail", sampling_rate=16000).to(device)
    print(f"input: {inp}")
    with torch.no_grad():
        diff = (ours(inp) - hf(**inp).logits).abs().max().item()
        runs = {
            "hf": lambda: hf(**inp).logits,
            "ours": lambda: ours(inp),
            "ours_run_with_cache": lambda: ours.run_with_cache(inp),
        }
        results = {}
        for name, fn in runs.items():
            seconds = best_time(fn, repeat=5)
            with PeakRSS() as mem:
                fn()
            cuda_peak = None
            if device == "cuda":
                torch.cuda.reset_peak_memory_stats()
                fn()
                cuda_peak = torch.cuda.max_memory_allocated()
            results[name] = (seconds, mem.added, cuda_peak)
    print(f"max |Δlogits| ours vs HF: {diff:.2e}")
    print(f"{'run':22s} {'seconds':>9s} {'ratio':>7s} {'peak RSS added':>16s}" + ("  cuda peak" if device == "cuda" else ""))
    base = results["hf"][0]
    for name, (sec, added, cuda_peak) in results.items():
        line = f"{name:22s} {sec:9.4f} {sec / base:7.2f} {mib(added):>16s}"
        if cuda_peak is not None:
            line += f"  {mib(cuda_peak)}"
        print(line)
    ratio = results["ours"][0] / base
    print(f"forward time ratio (ours / HF, no hooks) = {ratio:.2f}  [target <= 1.2: {'met' if ratio <= 1.2 else 'NOT met'}]")


def loading_memory(shapes: list[str], dtypes: list[str]) -> None:
    """Peak RSS of `from_pretrained` above the imports, as a multiple of the loaded weights, on released
    widths and vocabularies (2 LM and 2 encoder layers, bf16 shards as released)."""
    import psutil

    from tests.big_checkpoint import SHAPES, load_peak, real_width, write_checkpoint

    for shape in shapes:
        if shape not in SHAPES:
            raise SystemExit(f"--load-shapes: unknown shape {shape!r}; choose from {sorted(SHAPES)}")
        config, model_cls = real_width(shape)
        text = config.text_config
        with tempfile.TemporaryDirectory() as tmp:
            size = write_checkpoint(Path(tmp), config, model_cls)
            print(f"{shape} width: embedding {text.vocab_size} x {text.hidden_size}, 2 LM + 2 encoder layers; "
                  f"bf16 checkpoint {mib(size)}")
            for dtype in dtypes:
                need = size * (2 if dtype == "float32" else 1) * 1.4 + 2**30
                free = psutil.virtual_memory().available
                if free < need:
                    print(f"  {dtype}: skipped ({mib(free)} available, ~{mib(int(need))} needed)")
                    continue
                stats = load_peak(Path(tmp), dtype)
                ratio = stats["ratio"]
                print(f"  {dtype:9s} weights {mib(stats['params'])}; peak RSS above the imports "
                      f"{mib(stats['added'])} = {ratio:.2f} x the weights "
                      f"[target <= 1.3: {'met' if ratio <= 1.3 else 'NOT met'}]")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--skip-load", action="store_true")
    parser.add_argument("--skip-forward", action="store_true")
    parser.add_argument("--load-shapes", default="qwen2_audio",
                        help="released widths to load, comma-separated: qwen2_audio (embedding 156032 x 4096), "
                             "voxtral_mini (131072 x 3072)")
    parser.add_argument("--load-dtypes", default="float32,bfloat16", help="target dtypes, comma-separated")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, device {args.device}, threads {torch.get_num_threads()}")
    if not args.skip_forward:
        forward_comparison(args.device)
    if not args.skip_load:
        loading_memory(args.load_shapes.split(","), args.load_dtypes.split(","))


if __name__ == "__main__":
    main()
