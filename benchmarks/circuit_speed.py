"""Edge attribution speed and memory: EAP, EAP-IG (5 steps) and exact edge patching, in one run.

On the CPU: a small LALM shape (LM 4 x 256, 4 heads, vocabulary 4096, 150 audio + 30 text tokens,
a 2-layer audio encoder). Prints, per method, seconds per item, edges per second, the ratio to one
plain forward, and the peak resident memory added. With a GPU: the same on a 7B-shaped LM (bf16,
32 x 4096, 32 heads, 750 audio + 50 text tokens); without one it prints what that shape needs.

Memory of edge attribution (per batch of B items, this implementation; `lalm_lens/circuits/batch.py`):
the sender-output difference Δ [B, n_senders, W, d_model] is kept (W: the batch's longest item);
gradients are folded into scores as the backward reaches each receiver and never kept.
n_senders S = n_inputs + L (H + 1); bytes(Δ) = B · S · W · d_model · b (b = 4 for float32, 2 for
bf16), plus the clean and corrupted sender outputs while Δ is formed ((2B + R)/B × that at the
peak, R corrupted rows), plus one forward/backward's activations; EAP-IG over activations also
keeps every sender hook's clean and corrupted value (2× more). `max_delta_gib=` bounds all but the
last by taking senders in chunks (each chunk re-runs the item: time × n_chunks). Exact patching
keeps both outputs and runs `batch_rows` suffixes at once.

    python benchmarks/circuit_speed.py
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from benchmarks._measure import PeakRSS  # noqa: E402
from lalm_lens import BlockConfig, EncoderConfig, HookedLALM, LALMConfig, ProjectorConfig  # noqa: E402
from lalm_lens.circuits import Graph, edge_attribution  # noqa: E402
from lalm_lens.tracing import Given, answer_prob  # noqa: E402


def build(device: str, L: int, D: int, H: int, vocab: int, dtype=torch.float32, enc_layers: int = 2) -> HookedLALM:
    enc = EncoderConfig(d_model=256, d_head=64, n_heads=4, n_layers=enc_layers, n_ctx=1500, d_mlp=1024, act_fn="gelu",
                        normalization_type="LN", positional_embedding_type="learned", causal=False, pool=2,
                        final_norm=True, n_mels=128, n_frames=3000, kind="padded", device=device, dtype=dtype)
    lm = BlockConfig(d_model=D, d_head=D // H, n_heads=H, n_key_value_heads=H, n_layers=L, n_ctx=4096, d_mlp=4 * D,
                     d_vocab=vocab, act_fn="silu", gated_mlp=True, normalization_type="RMS",
                     positional_embedding_type="rotary", eps=1e-6, device=device, dtype=dtype)
    config = LALMConfig(family="qwen2_audio", lm=lm, encoder=enc, projector=ProjectorConfig("linear", 256, D),
                        audio_token_id=vocab - 1)
    return HookedLALM(config).init_weights(std=0.05, seed=0).to(device).eval()


def inputs(model, n_audio: int, n_text: int, device: str):
    from transformers import WhisperFeatureExtractor

    vocab = model.cfg.d_vocab
    gen = torch.Generator().manual_seed(0)
    wave = 0.1 * torch.randn(int(n_audio / 25 * 16000), generator=gen)
    fe = WhisperFeatureExtractor(feature_size=128)
    ids = torch.tensor([[vocab - 1] * n_audio + torch.randint(0, vocab - 1, (n_text,), generator=gen).tolist()])

    def make(w):
        f = fe(w.numpy(), sampling_rate=16000, return_attention_mask=True, return_tensors="pt")
        return {k: v.to(device) for k, v in dict(input_ids=ids, input_features=f["input_features"].to(model.cfg.dtype),
                                                  feature_attention_mask=f["attention_mask"]).items()}
    return make(wave), make(torch.zeros_like(wave))


def measure(model, clean, corrupted, device: str, exact: bool = True) -> list[dict]:
    with torch.no_grad():
        answer = int(model(clean)[0, -1].argmax())
    n_edges = Graph.from_model(model).n_edges

    def forward():
        with torch.no_grad():
            model(clean)

    forward()
    t = time.perf_counter()
    forward()
    t_fwd = time.perf_counter() - t
    rows = []
    runs = [(m, s, 1) for m, s in (("eap", 1), ("eap-ig-inputs", 5), ("eap-ig-activations", 5), ("exact", 1))]
    for method, steps, batch in runs[:3] + [("eap", 1, 4), ("eap-ig-inputs", 5, 4)] + runs[3:]:
        if method == "exact" and not exact:
            continue
        items = [(clean, answer)] * batch  # `batch` items as the rows of one batch; seconds are per item
        run = lambda: edge_attribution(model, items, Given(corrupted), metric=answer_prob,  # noqa: E731
                                       method=method, steps=steps, batch_size=batch)
        if device == "cuda":
            torch.cuda.reset_peak_memory_stats()
            torch.cuda.synchronize()
        with PeakRSS() as rss:
            t = time.perf_counter()
            run()
            if device == "cuda":
                torch.cuda.synchronize()
            dt = (time.perf_counter() - t) / batch
        peak = torch.cuda.max_memory_allocated() if device == "cuda" else rss.added
        rows.append(dict(method=method if batch == 1 else f"{method} (x{batch} batched)", steps=steps, seconds=dt, edges_per_s=n_edges / dt, forwards=dt / t_fwd,
                         peak_mib=peak / 2**20))
    return rows, n_edges, t_fwd


def show(title: str, rows, n_edges: int, t_fwd: float) -> None:
    print(f"\n{title}: {n_edges} edges, one plain forward {t_fwd * 1e3:.1f} ms (load {os.getloadavg()[0]:.1f})")
    print(f"{'method':<28}{'steps':>6}{'s/item':>10}{'edges/s':>12}{'x forward':>11}{'peak MiB':>10}")
    for r in rows:
        print(f"{r['method']:<28}{r['steps']:>6}{r['seconds']:>10.2f}{r['edges_per_s']:>12.0f}{r['forwards']:>11.1f}"
              f"{r['peak_mib']:>10.0f}")


def seven_b_needs(n_audio: int = 750, n_text: int = 50, budget_gib: float = 2.0) -> str:
    L, H, D = 32, 32, 4096
    senders, pos = 2 + L * (H + 1), n_audio + n_text
    delta = senders * pos * D * 2
    chunk = int(budget_gib * 2**30 // (pos * D * 2))
    n_chunks = -(-senders // chunk)
    return (f"7B shape (L={L}, H={H}, d={D}, {pos} positions, bf16): Δ = {senders} senders x {pos} x {D} x 2 B "
            f"= {delta / 2**30:.1f} GiB, peak while forming it ≈ {3 * delta / 2**30:.1f} GiB, plus ~15 GiB of weights "
            f"and one forward/backward's activations: fits an 80 GB GPU unchunked; max_delta_gib={budget_gib:g} takes "
            f"{n_chunks} chunks of ≤ {chunk} senders (Δ ≤ {chunk * pos * D * 2 / 2**30:.1f} GiB, "
            f"≈ {3 * chunk * pos * D * 2 / 2**30:.1f} GiB while formed; time × {n_chunks})")


def main() -> None:
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    device = "cuda" if torch.cuda.is_available() else "cpu"
    model = build("cpu", L=4, D=256, H=4, vocab=4096)
    clean, corrupted = inputs(model, 150, 30, "cpu")
    show("CPU shape (LM 4 x 256, 4 heads, vocab 4096, 150 audio + 30 text)", *measure(model, clean, corrupted, "cpu"))
    if device == "cuda":
        model = build("cuda", L=32, D=4096, H=32, vocab=152064, dtype=torch.bfloat16)
        clean, corrupted = inputs(model, 750, 50, "cuda")
        show("7B shape (bf16, 750 audio + 50 text)", *measure(model, clean, corrupted, "cuda", exact=False))
    else:
        print("\nno GPU here; " + seven_b_needs())


if __name__ == "__main__":
    main()
