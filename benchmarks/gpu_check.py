"""A short check on a CUDA machine: every family's tiny model on the GPU against its original,
float32 and bfloat16, the fast trace engine against the reference, and greedy decoding.

CPU tests cannot catch a tensor left on the wrong device; this does. It prints one
line per check and exits non-zero if any fails.

    python benchmarks/gpu_check.py [--out DIR]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import traceback
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from lalm_lens import HookedLALM  # noqa: E402
from lalm_lens.tracing import GaussianNoise, causal_trace  # noqa: E402
from tests import tiny_models as tm  # noqa: E402

FAILED = []


def check(name, fn):
    try:
        detail = fn()
        print(f"ok    {name}: {detail}", flush=True)
    except Exception as err:  # report and go on
        FAILED.append(name)
        print(f"FAIL  {name}: {type(err).__name__}: {err}", flush=True)
        traceback.print_exc()


def families(root: Path):
    """(name, folder, prepare kwargs, reference loader) for each family's tiny checkpoint."""
    from tests.tiny_af3 import save_af3
    from tests.tiny_omni import save_omni_thinker

    return [  # the originals: each family's registered reference
        ("qwen2_audio", tm.save_qwen2_audio(root / "q2a"), {}, tm.reference_of),
        ("voxtral", tm.save_voxtral(root / "vox", head_dim=24), {}, tm.reference_of),
        ("desta25", tm.save_desta(root / "desta"), {"transcript": "hello world"}, tm.reference_of),
        ("qwen_audio", tm.save_qwen_audio(root / "qa"), {}, tm.reference_of),
        ("audio_flamingo3", save_af3(root / "af3"), {}, tm.reference_of),
        ("qwen2_5_omni", save_omni_thinker(root / "omni"), {}, tm.reference_of),
    ]


@torch.no_grad()
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=tempfile.mkdtemp())
    args = parser.parse_args()
    dev = "cuda"
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name(0)}", flush=True)
    for name, folder, extra, load_ref in families(Path(args.out)):
        for dtype, tol in ((torch.float32, 1e-4), (torch.bfloat16, 0.05)):  # bf16: verify's relative tolerance
            def compare(folder=folder, extra=extra, load_ref=load_ref, dtype=dtype, tol=tol):
                ours = HookedLALM.from_pretrained(folder, device=dev, dtype=dtype)
                ref = load_ref(folder, dtype, dev)
                inp = ours.prepare([tm.clip(2.0, seed=1), tm.clip(3.5, seed=2)], [tm.PROMPT, tm.PROMPT],
                                   sampling_rate=16000, **({k: [v, v] for k, v in extra.items()})).to(dev)
                a, b = ours(inp), ours.family.reference.forward(ref, inp).logits
                mask = inp["attention_mask"].bool()
                diff = (a.float() - b.float()).abs()[mask].max().item()
                bound = tol if dtype == torch.float32 else tol * b.float().abs().max().item()
                assert a.device.type == "cuda" and diff <= bound, f"max |dlogits| {diff:.2e} > {bound:.2e}"
                tokens = ours.generate(inp, max_new_tokens=4, return_type="tokens", eos_token_ids=[])
                assert tokens.shape == (2, 4)
                return f"max |dlogits| {diff:.2e} (bound {bound:.1e}); generate ok"

            check(f"{name} {str(dtype).split('.')[-1]} vs original", compare)

        def trace(folder=folder, extra=extra):
            model = HookedLALM.from_pretrained(folder, device=dev, dtype=torch.float32)
            inp = model.prepare(tm.clip(1.5), tm.PROMPT, answer_prefix=tm.ANSWER_PREFIX, sampling_rate=16000,
                                **extra).to(dev)
            answer = int(model(inp)[0, -1].argmax())
            worst = 0.0
            for kw in (dict(mode="tokens", states="resid_post"), dict(mode="layers", states="mlp_out", window=3),
                       dict(mode="tokens", states="attn_out", corruption=GaussianNoise(n_samples=3))):
                a = causal_trace(model, inp, answer=answer, engine="reference", **kw)
                b = causal_trace(model, inp, answer=answer, engine="fast", **kw)
                worst = max(worst, (a.p_patched - b.p_patched).abs().max().item())
            assert worst <= 1e-5, f"fast vs reference {worst:.2e}"
            return f"fast vs reference max |dp| {worst:.1e}"

        check(f"{name} causal_trace on cuda", trace)
    print("FAILED: " + ", ".join(FAILED) if FAILED else "all GPU checks passed", flush=True)
    return 1 if FAILED else 0


if __name__ == "__main__":
    sys.exit(main())
