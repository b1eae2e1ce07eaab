"""The bundled demo LALMs: tiny Qwen2-Audio-format models trained on synthesized sounds.

`HookedLALM.from_pretrained("demo")` loads the attribute model ("The pitch is"
-> "low") through the same Qwen2-Audio conversion path as a real checkpoint;
`lalm-lens trace` traces it by default. `"demo-letters"` loads the
multiple-choice model ("Options: A. high B. low C. middle. ..." -> "B"), whose
answer depends on where the heard option stands in the prompt.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

DEMO_DIR = Path(__file__).resolve().parent.parent / "demo_model"
DEMO_LETTERS_DIR = Path(__file__).resolve().parent.parent / "demo_model_letters"
TASKS = ("attributes", "letters")


def _check_task(task: str) -> None:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, got {task!r}")


def demo_example(wav_path, seed: int = 0, attribute: str = "pitch", task: str = "attributes"):
    """Write one synthesized clip; return `(path, prompt, answer, options, answer_prefix)`.

    `task="letters"`: the options shuffled behind letters, the answer a letter,
    `options` the option words (they mark the option list as the `object` group).
    """
    import soundfile

    from lalm_lens.demo.synth import RATE, Example, LetterExample, random_attributes, shuffled_options, synthesize

    _check_task(task)
    rng = np.random.default_rng(10_000 + seed)
    attrs = random_attributes(rng)
    example = Example(attrs, attribute, synthesize(attrs, rng))
    if task == "letters":
        example = LetterExample(attrs, attribute, example.wave, shuffled_options(attribute, rng))
    wav_path = Path(wav_path)
    wav_path.parent.mkdir(parents=True, exist_ok=True)
    soundfile.write(wav_path, example.wave, RATE)
    return str(wav_path), example.question, example.answer, example.options, example.answer_prefix


def write_demo_dataset(out, n: int = 200, seed: int = 1234, task: str = "attributes") -> Path:
    """`n` held-out items of `task` (WAV + JSONL in the trace-dataset format) under `out`.

    Letter items: `answer` is the letter, `options` the option words.
    """
    import soundfile

    from lalm_lens.demo.synth import RATE, make_examples, make_letter_examples

    _check_task(task)
    out = Path(out)
    (out / "audio").mkdir(parents=True, exist_ok=True)
    lines = []
    for i, ex in enumerate((make_letter_examples if task == "letters" else make_examples)(n, seed)):
        name = f"audio/item{i:04d}.wav"
        soundfile.write(out / name, ex.wave, RATE)
        lines.append(dict(id=f"item{i:04d}", audio=name, question=ex.question, options=ex.options,
                          answer=ex.answer, answer_prefix=ex.answer_prefix, attribute=ex.asked,
                          attributes=ex.attributes))
    path = out / "items.jsonl"
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path
