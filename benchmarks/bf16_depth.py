"""How far our bfloat16 logits drift from the original's as the LM gets deeper (the README's depth numbers).

Random Qwen2-Audio-format models at a real LM width (1024, MLP 2816, 8 heads of 128) and the real encoder
width (1280, 2 layers), drawn like the test models (1/sqrt(fan_in)); 2, 8, 16 and 32 LM layers. For each,
max |Δlogits| as a share of max |logits| (float32 original): ours bf16 vs original bf16, and each bf16
side vs the float32 original. In bfloat16 the two round at different points (our norms and softmax run
in float32), so the difference grows with depth; `lalm-lens verify --dtype bfloat16` allows 5 %.

    python benchmarks/bf16_depth.py [--depths 2 8 16 32]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from lalm_lens import HookedLALM  # noqa: E402
from tests import tiny_models as tm  # noqa: E402


def build(folder: Path, n_layers: int) -> Path:
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    from lalm_lens.toy import qwen2_audio_processor

    text = dict(model_type="qwen2", vocab_size=4096, hidden_size=1024, intermediate_size=2816,
                num_hidden_layers=n_layers, num_attention_heads=8, num_key_value_heads=8)
    audio = dict(model_type="qwen2_audio_encoder", d_model=1280, encoder_layers=2, encoder_attention_heads=20,
                 encoder_ffn_dim=5120, num_mel_bins=128, max_source_positions=1500)
    config = Qwen2AudioConfig(audio_config=audio, text_config=text, audio_token_index=4095)
    torch.manual_seed(0)
    model = Qwen2AudioForConditionalGeneration(config).eval()
    tm.scale_init(model, seed=0)
    model.save_pretrained(folder)
    qwen2_audio_processor(tm.PROMPT_WORDS, vocab_size=4096, audio_token_id=4095).save_pretrained(folder)
    return folder


@torch.no_grad()
def measure(folder: Path) -> tuple[float, float, float]:
    from transformers import Qwen2AudioForConditionalGeneration

    ours = HookedLALM.from_pretrained(folder, device="cpu", dtype=torch.bfloat16)
    inp = ours.prepare(tm.clip(3.0), tm.PROMPT, answer_prefix=tm.ANSWER_PREFIX, sampling_rate=16000)
    a = ours(inp).float()
    del ours
    logits = {}
    for dtype in (torch.bfloat16, torch.float32):
        hf = Qwen2AudioForConditionalGeneration.from_pretrained(folder, dtype=dtype).eval()
        logits[dtype] = hf(**inp).logits.float()
        del hf
    b, c = logits[torch.bfloat16], logits[torch.float32]
    scale = c.abs().max().item()
    share = lambda x, y: 100 * (x - y).abs().max().item() / scale  # noqa: E731
    return share(a, b), share(a, c), share(b, c)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--depths", type=int, nargs="+", default=[2, 8, 16, 32], help="LM layers (default: 2 8 16 32)")
    args = p.parse_args()
    root = Path(tempfile.mkdtemp())
    print("max |Δlogits| as % of max |logits| (float32 original); LM width 1024, encoder width 1280")
    print(f"{'LM layers':>9}  {'ours bf16 vs original bf16':>26}  {'ours bf16 vs fp32':>17}  {'original bf16 vs fp32':>21}")
    for n in args.depths:
        folder = build(root / f"depth{n}", n)
        ours_orig, ours_fp32, orig_fp32 = measure(folder)
        print(f"{n:>9}  {ours_orig:>25.2f}%  {ours_fp32:>16.2f}%  {orig_fp32:>20.2f}%", flush=True)


if __name__ == "__main__":
    main()
