"""The bundled demo LALM: a tiny Qwen2-Audio-format model trained on synthesized sounds.

`HookedLALM.from_pretrained("demo")` loads it through the same Qwen2-Audio
conversion path as a real checkpoint; `lalm-lens trace` traces it by default.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

DEMO_DIR = Path(__file__).resolve().parent.parent / "demo_model"


def demo_example(wav_path, seed: int = 0, attribute: str = "pitch"):
    """Write one synthesized clip; return `(path, prompt, answer, options, answer_prefix)`."""
    import soundfile

    from lalm_lens.demo.synth import RATE, Example, prompt_for, random_attributes, synthesize

    rng = np.random.default_rng(10_000 + seed)
    attrs = random_attributes(rng)
    example = Example(attrs, attribute, synthesize(attrs, rng))
    wav_path = Path(wav_path)
    wav_path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(wav_path, example.wave, RATE)
    return str(wav_path), prompt_for(attribute), example.answer, example.options, example.answer_prefix


def write_demo_dataset(out, n: int = 200, seed: int = 1234) -> Path:
    """`n` held-out items (WAV + JSONL in the trace-dataset format) under `out`."""
    import soundfile

    from lalm_lens.demo.synth import RATE, make_examples

    out = Path(out)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, ex in enumerate(make_examples(n, seed)):
        name = f"audio/item{i:04d}.wav"
        soundfile.write(out / name, ex.wave, RATE)
        lines.append(dict(id=f"item{i:04d}", audio=name, question=ex.question, options=ex.options,
                          answer=ex.answer, answer_prefix=ex.answer_prefix, attribute=ex.asked,
                          attributes=ex.attributes))
    path = out / "items.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path
