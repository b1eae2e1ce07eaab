"""Print the measured agreement with the originals on the tiny test checkpoints (the numbers the
tests bound): max |Δlogits| and the worst per-layer max |Δ| of hidden states, per family and case.

    python benchmarks/agreement.py
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from lalm_lens import HookedLALM  # noqa: E402
from tests import tiny_models as tm  # noqa: E402


def diff(a, b, mask=None) -> float:
    d = (a.float() - b.float()).abs()
    return (d[mask.bool()] if mask is not None else d).max().item()


def layers(model, cache, hidden_states, mask=None) -> float:
    """Worst max |Δ| over every LM layer's input and the final normed output (valid positions only)."""
    n = model.cfg.n_layers
    worst = max(diff(cache["resid_pre", l], hidden_states[l], mask) for l in range(n))
    return max(worst, diff(model.ln_final(cache["resid_post", n - 1]), hidden_states[n], mask))


@torch.no_grad()
def main() -> None:
    from tests.tiny_af3 import save_af3
    from tests.tiny_omni import save_omni_thinker

    root = Path(tempfile.mkdtemp())
    families = [  # (name, folder, prepare keywords); the original is the family's registered reference
        ("Qwen2-Audio (GQA LM)", tm.save_qwen2_audio(root / "a", n_kv_heads=2), {}),
        ("Qwen2-Audio (MHA LM)", tm.save_qwen2_audio(root / "b", n_kv_heads=4, seed=1), {}),
        ("Voxtral", tm.save_voxtral(root / "c", head_dim=24), {}),
        ("DeSTA2.5", tm.save_desta(root / "d"), {"transcript": "hello world"}),
        ("DeSTA2", tm.save_desta2(root / "e"), {"transcript": " hello world"}),
        ("Qwen-Audio v1", tm.save_qwen_audio(root / "f"), {}),
        ("Audio Flamingo 3", save_af3(root / "g"), {}),
        ("Qwen2.5-Omni thinker", save_omni_thinker(root / "h"), {}),
    ]
    print(f"{'family':22s} {'case':34s} {'max |Δlogits|':>14s} {'worst layer':>12s}")
    for name, folder, extra in families:
        ours = HookedLALM.from_pretrained(folder, device="cpu")
        ref, forward = tm.reference_of(folder), ours.family.reference.forward
        cases = [("one clip (3 s)", [tm.clip(3.0)], [tm.PROMPT]),
                 ("batch 2 s + 4.5 s, padded", [tm.clip(2.0, seed=1), tm.clip(4.5, seed=2)], [tm.PROMPT, "Describe the audio."])]
        if name in ("Voxtral", "Audio Flamingo 3"):
            cases.append(("45 s (two 30 s windows)", [tm.clip(45.0, seed=3)], [tm.PROMPT]))
        for label, audio, prompts in cases:
            kw = {k: [v] * len(prompts) for k, v in extra.items()}
            inp = ours.prepare(audio, prompts, sampling_rate=16000, **kw)
            logits, cache = ours.run_with_cache(inp)
            out = forward(ref, inp)
            mask = inp["attention_mask"] if len(prompts) > 1 else None
            worst = layers(ours, cache, out.hidden_states, mask)
            print(f"{name:22s} {label:34s} {diff(logits, out.logits, mask):14.2e} {worst:12.2e}")
        if not extra and name != "Qwen-Audio v1":
            inp = ours.prepare(None, tm.PROMPT)
            print(f"{name:22s} {'text only':34s} {diff(ours(inp), forward(ref, inp).logits):14.2e}")
        ours16, ref16 = HookedLALM.from_pretrained(folder, device="cpu", dtype=torch.bfloat16), tm.reference_of(
            folder, torch.bfloat16)
        inp = ours.prepare([tm.clip(3.0)], [tm.PROMPT], sampling_rate=16000, **{k: [v] for k, v in extra.items()})
        truth = ours(inp)
        a, b = ours16(inp), forward(ref16, inp).logits
        print(f"{name:22s} {'bfloat16 (ours vs original)':34s} {diff(a, b):14.2e}   "
              f"(vs float32: ours {diff(a, truth):.2e}, original {diff(b, truth):.2e}; max |logit| {truth.abs().max():.2f})")


if __name__ == "__main__":
    main()
