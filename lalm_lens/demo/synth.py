"""Procedural sounds and SAKURA-style questions for the demo models (numpy only, seeded).

Every clip has three attributes — pitch, pattern, loudness — and each
question asks about one of them, so the same clip answers differently depending
on what is asked: the model must fuse the question with the sound.

Two tasks: `attributes` answers with the attribute word ("The pitch is" -> "low");
`letters` lists the options in a per-item shuffled order behind letters and
answers with the letter ("The answer is" -> "B"), so the model must bind what it
heard to a position in the prompt.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

RATE = 16000
MAX_SECONDS = 3.0

ATTRIBUTES = {
    "pitch": dict(options=["low", "middle", "high"], question="What is the pitch of the sound?",
                  prefix="The pitch is"),
    "pattern": dict(options=["steady", "pulsing", "rising"], question="What is the pattern of the sound?",
                    prefix="The pattern is"),
    "loudness": dict(options=["quiet", "loud"], question="How loud is the sound?", prefix="The sound is"),
}
PITCH_HZ = {"low": (180.0, 300.0), "middle": (500.0, 800.0), "high": (1300.0, 2100.0)}
LEVEL = {"quiet": (0.01, 0.025), "loud": (0.3, 0.6)}


@dataclass
class Example:
    attributes: dict[str, str]
    asked: str
    wave: np.ndarray

    @property
    def question(self) -> str:
        return prompt_for(self.asked)

    @property
    def answer(self) -> str:
        return self.attributes[self.asked]

    @property
    def answer_prefix(self) -> str:
        return ATTRIBUTES[self.asked]["prefix"]

    @property
    def options(self) -> list[str]:
        return list(ATTRIBUTES[self.asked]["options"])


def prompt_for(attribute: str) -> str:
    a = ATTRIBUTES[attribute]
    return f"{a['question']} Possible options: {', '.join(a['options'])}."


def synthesize(attrs: dict[str, str], rng: np.random.Generator) -> np.ndarray:
    """One clip of 1.2 s to MAX_SECONDS with the given attributes and a random onset.

    pitch: the band of a sine's frequency; pattern: steady, pulsing (on/off at
    3-6 Hz) or rising (a glide up by x1.6); loudness: the tone's level; plus a
    faint noise floor.
    """
    seconds = rng.uniform(1.2, MAX_SECONDS - 0.2)
    n = int(seconds * RATE)
    t = np.arange(n) / RATE
    f0 = rng.uniform(*PITCH_HZ[attrs["pitch"]])
    if attrs["pattern"] == "rising":
        freq = f0 * 1.6 ** (t / seconds)  # glides up by a factor 1.6, staying clear of the next pitch band
        phase = 2 * np.pi * np.cumsum(freq) / RATE
    else:
        phase = 2 * np.pi * f0 * t + rng.uniform(0, 2 * np.pi)
    tone = np.sin(phase)
    envelope = np.ones(n)
    if attrs["pattern"] == "pulsing":
        rate = rng.uniform(3.0, 6.0)
        envelope = (np.sin(2 * np.pi * rate * t) > 0).astype(float)
    fade = min(n // 10, int(0.02 * RATE))
    envelope[:fade] *= np.linspace(0, 1, fade)
    envelope[n - fade:] *= np.linspace(1, 0, fade)
    level = rng.uniform(*LEVEL[attrs["loudness"]])
    wave = level * tone * envelope + rng.uniform(0.0005, 0.0015) * rng.standard_normal(n)
    onset = np.zeros(int(rng.uniform(0, 0.2) * RATE))
    return np.concatenate([onset, wave])[: int(MAX_SECONDS * RATE)].astype(np.float32)


def random_attributes(rng: np.random.Generator) -> dict[str, str]:
    return {name: str(rng.choice(spec["options"])) for name, spec in ATTRIBUTES.items()}


def make_examples(n: int, seed: int) -> list[Example]:
    """`n` examples; attributes and the attribute asked cycle evenly, everything else random."""
    rng = np.random.default_rng(seed)
    names = list(ATTRIBUTES)
    out = []
    for i in range(n):
        attrs = random_attributes(rng)
        out.append(Example(attrs, names[i % len(names)], synthesize(attrs, rng)))
    return out


def vocabulary(task: str = "attributes") -> list[str]:
    """Every word the prompts and answers of `task` use."""
    from lalm_lens.toy import words_of

    if task == "letters":
        texts = [letter_prompt(a, ATTRIBUTES[a]["options"], reply) + " " + LETTER_PREFIX
                 for a in ATTRIBUTES for reply in ("letter", "word")]
        return words_of(texts + [" ".join(LETTERS)])
    texts = [prompt_for(a) + " " + ATTRIBUTES[a]["prefix"] + " " + " ".join(ATTRIBUTES[a]["options"])
             for a in ATTRIBUTES]
    return words_of(texts)


# ---------------------------------------------------------------- the letter task
LETTERS = ("A", "B", "C")
LETTER_PREFIX = "The answer is"


def letter_prompt(attribute: str, order, reply: str = "letter") -> str:
    """The question with the options in `order` behind letters: "... Options: A. high B. low C. middle. ..."."""
    listed = " ".join(f"{letter}. {word}" for letter, word in zip(LETTERS, order))
    return f"{ATTRIBUTES[attribute]['question']} Options: {listed}. Answer with the {reply}."


@dataclass
class LetterExample(Example):
    """A multiple-choice item: the options of the attribute asked, shuffled; the answer is a letter.

    `options` are the option words (they locate the option list, the `object`
    token group, in the prompt); `letters` the letters they stand behind.
    `reply="word"` asks for the option word instead (a training aid).
    """

    order: tuple[str, ...] = ()
    reply: str = "letter"

    @property
    def question(self) -> str:
        return letter_prompt(self.asked, self.order, self.reply)

    @property
    def answer(self) -> str:
        word = self.attributes[self.asked]
        return word if self.reply == "word" else LETTERS[self.order.index(word)]

    @property
    def answer_prefix(self) -> str:
        return LETTER_PREFIX

    @property
    def options(self) -> list[str]:
        return list(self.order)


def shuffled_options(attribute: str, rng: np.random.Generator) -> tuple[str, ...]:
    return tuple(str(w) for w in rng.permutation(ATTRIBUTES[attribute]["options"]))


def make_letter_examples(n: int, seed: int) -> list[LetterExample]:
    """`n` letter items; the attribute asked cycles evenly, the clip and the option order are random."""
    rng = np.random.default_rng(seed)
    names = list(ATTRIBUTES)
    out = []
    for i in range(n):
        attrs = random_attributes(rng)
        asked = names[i % len(names)]
        out.append(LetterExample(attrs, asked, synthesize(attrs, rng), shuffled_options(asked, rng)))
    return out


def ask(example: Example, attribute: str, rng: np.random.Generator) -> Example:
    """The same clip asked about `attribute` (a letter item gets a fresh option order)."""
    if isinstance(example, LetterExample):
        return replace(example, asked=attribute, order=shuffled_options(attribute, rng))
    return replace(example, asked=attribute)
