"""SAKURA (github.com/ckyang1124/SAKURA) as trace items, with AudioLens-style prompts.

Release layout: `data/{Animal,Emotion,Gender,Language}/audio/*.wav` and
`metadata.csv` (`file, attribute_label, single_instruction, single_answer, ...`).
`template="audiolens"` asks the AudioLens question with "Possible options: ..."
and the assistant prefix (the reference study's prompts); `template="sakura"`
uses the release's own single-hop instruction with its inline "(a) ... (b) ..."
options and no prefix.
"""

from __future__ import annotations

import csv
import re
from pathlib import Path
from typing import Union

from lalm_lens.tracing.dataset import Item

TEMPLATES = {
    "Emotion": dict(question="What is the emotion of the speaker in the speech?",
                    options=["angry", "disgust", "fear", "happy", "sad"], answer_prefix="The speaker's emotion is"),
    "Language": dict(question="What is the language spoken in the speech?",
                     options=["English", "German", "Spanish", "French", "Italian", "Chinese", "Japanese", "Korean"],
                     answer_prefix="The speech's spoken language is"),
    "Gender": dict(question="What is the gender of the speaker in the speech?", options=["male", "female"],
                   answer_prefix="The speaker's gender is"),
    "Animal": dict(question="What animal makes the sound?",
                   options=["dog", "cat", "pig", "cow", "frog", "hen", "rooster", "sheep", "crow"],
                   answer_prefix="The sound file's animal is"),
}
LANGUAGE_CODES = {"de": "German", "en": "English", "es": "Spanish", "fr": "French", "it": "Italian",
                  "ja": "Japanese", "ko": "Korean", "zh": "Chinese"}


def audiolens_prompt(track: str) -> tuple[str, list[str], str]:
    """(question with its option list, options, answer prefix) for a SAKURA track."""
    t = TEMPLATES[track]
    return f"{t['question']} Possible options: {', '.join(t['options'])}.", list(t["options"]), t["answer_prefix"]


def label_to_option(track: str, label: str) -> str:
    label = LANGUAGE_CODES.get(label.strip().lower(), label.strip()) if track == "Language" else label.strip()
    for option in TEMPLATES[track]["options"]:
        if option.lower() == label.lower():
            return option
    raise ValueError(f"SAKURA {track} label {label!r} matches none of {TEMPLATES[track]['options']}")


def inline_options(instruction: str) -> list[str]:
    """Options written as '(a) Female (b) Male' inside an instruction."""
    return [m.strip().rstrip(".?,") for m in re.findall(r"\([a-z]\)\s*([^()]+)", instruction)]


def load_sakura(root: Union[str, Path], track: str, template: str = "audiolens") -> list[Item]:
    """Items of one track (`Animal`, `Emotion`, `Gender`, `Language`) of a SAKURA checkout."""
    track = track.capitalize()
    if track not in TEMPLATES:
        raise ValueError(f"unknown SAKURA track {track!r}; choose from {sorted(TEMPLATES)}")
    folder = Path(root) / "data" / track
    meta = folder / "metadata.csv"
    if not meta.is_file():
        raise FileNotFoundError(f"no {meta} (expected the SAKURA release layout data/<Track>/metadata.csv)")
    items = []
    with meta.open(newline="") as f:
        for row in csv.DictReader(f):
            audio = folder / "audio" / Path(row["file"]).name
            if template == "audiolens":
                question, options, prefix = audiolens_prompt(track)
                answer = label_to_option(track, row["attribute_label"])
            elif template == "sakura":
                question, prefix = row["single_instruction"], None
                options = inline_options(question)
                answer = re.sub(r"^\s*\([a-z]\)\s*", "", row["single_answer"]).strip()
            else:
                raise ValueError(f"template must be 'audiolens' or 'sakura', got {template!r}")
            items.append(Item(id=f"{track}/{Path(row['file']).stem}", audio=str(audio), question=question,
                              answer=answer, options=options, answer_prefix=prefix))
    return items
