"""Train the demo LALMs: tiny `Qwen2AudioForConditionalGeneration`s on synthesized sounds.

Plain PyTorch on the Hugging Face model, so the result is a real Qwen2-Audio
checkpoint (3 s audio window: `max_source_positions` 150 and the feature
extractor's `chunk_length` 3 agree). Seeded. Two tasks (see `synth.py`):
`attributes` (the bundled `demo_model`, about 10 minutes on 2 CPU cores) and
`letters` (the bundled `demo_model_letters`, multiple choice answered by letter, about 8 minutes: the
options redrawn at every step, a share of items answered by the word, and a marking loss at the option
words, without which the three-way binding did not emerge in 2400 steps).

    python -m lalm_lens.demo.train --out lalm_lens/demo_model
    python -m lalm_lens.demo.train --task letters --out lalm_lens/demo_model_letters
"""

from __future__ import annotations

import argparse
import json
import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lalm_lens.demo.synth import (ATTRIBUTES, LETTERS, MAX_SECONDS, RATE, LetterExample, ask, make_examples,
                                  make_letter_examples, vocabulary)

VOCAB_SIZE = 128
HELD_OUT_SEED, HELD_OUT_N = 20260, 400
THREADS = 2  # the bundled models' runs; the loss is reproducible for a fixed thread count


@dataclass(frozen=True)
class Task:
    """What a task trains on and the model it trains (LM layers, width, MLP width, vocabulary size)."""

    make: object  # (n, seed) -> examples
    out: str
    steps: int
    lr: float
    layers: int = 6
    width: int = 64
    ffn: int = 256
    vocab_size: int = VOCAB_SIZE
    mix: float = 0.0  # letters: share of training items answered by the option word (teaches hearing first)
    init: float = 0.02  # std of the initial weights (HF's 0.02 is small for width 64: binding learns late)
    reshuffle: bool = False  # letters: a fresh option order for every training row at every step
    marking: float = 0.0  # letters: weight of the marking loss at the option words (see `marking_loss`)


TASKS = {
    "attributes": Task(make_examples, "lalm_lens_out/demo_model_retrained", steps=1800, lr=3e-3),
    "letters": Task(make_letter_examples, "lalm_lens_out/demo_model_letters_retrained", steps=2000, lr=3e-3,
                    vocab_size=64, mix=0.3, init=0.1, reshuffle=True, marking=1.0),
}


def build_processor(task: str = "attributes"):
    from lalm_lens.toy import qwen2_audio_processor

    spec = TASKS[task]
    words = vocabulary(task)
    return qwen2_audio_processor(words, spec.vocab_size, spec.vocab_size - 1, chunk_length=int(MAX_SECONDS))


def build_model(seed: int, task: str = "attributes"):
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    spec = TASKS[task]
    config = Qwen2AudioConfig(
        audio_config=dict(model_type="qwen2_audio_encoder", d_model=64, encoder_layers=2, encoder_attention_heads=4,
                          encoder_ffn_dim=256, num_mel_bins=128, max_source_positions=int(MAX_SECONDS * 50)),
        text_config=dict(model_type="qwen2", vocab_size=spec.vocab_size, hidden_size=spec.width,
                         intermediate_size=spec.ffn, num_hidden_layers=spec.layers, num_attention_heads=4,
                         num_key_value_heads=4, max_position_embeddings=1024, tie_word_embeddings=False,
                         initializer_range=spec.init),
        audio_token_index=spec.vocab_size - 1, initializer_range=spec.init,
    )
    torch.manual_seed(seed)
    return Qwen2AudioForConditionalGeneration(config)


def encode(processor, examples) -> dict:
    """Tokenise prompts and compute log-mel features once (features kept as float16)."""
    texts, waves, answers = [], [], []
    tok = processor.tokenizer
    for ex in examples:
        conv = [{"role": "user", "content": [{"type": "audio", "audio": "clip"}, {"type": "text", "text": ex.question}]}]
        texts.append(processor.apply_chat_template(conv, add_generation_prompt=True, tokenize=False) + ex.answer_prefix)
        waves.append(ex.wave)
        answers.append(tok.convert_tokens_to_ids(ex.answer))
    out = processor(text=texts, audio=waves, sampling_rate=RATE, return_tensors="pt", padding=True)
    batch = dict(input_ids=out["input_ids"], attention_mask=out["attention_mask"],
                 input_features=out["input_features"].half(), feature_attention_mask=out["feature_attention_mask"],
                 answers=torch.tensor(answers), asked=[ex.asked for ex in examples])
    if isinstance(examples[0], LetterExample):
        batch.update(option_slots(tok, batch["input_ids"], examples))
    return batch


def option_slots(tok, input_ids: torch.Tensor, examples) -> dict:
    """Where each row's option words stand (the token after "<letter> ."), so the order can be redrawn."""
    letter_ids = torch.tensor(tok.convert_tokens_to_ids(list(LETTERS)))
    slots = torch.full((len(examples), len(LETTERS)), -1)
    for i, ex in enumerate(examples):
        at = torch.nonzero(torch.isin(input_ids[i], letter_ids)).flatten() + 2
        slots[i, : len(at)] = at
    heard = torch.tensor(tok.convert_tokens_to_ids([ex.attributes[ex.asked] for ex in examples]))
    return dict(slots=slots, heard=heard, letter_ids=letter_ids, dot_id=tok.convert_tokens_to_ids("."),
                by_word=torch.tensor([ex.reply == "word" for ex in examples]))


def redraw_options(batch: dict, rows: torch.Tensor, gen: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """`rows`' input ids with the option words in a fresh random order, and the answers that order implies."""
    ids, answers = batch["input_ids"][rows].clone(), batch["answers"][rows].clone()
    for r, row in enumerate(rows.tolist()):
        at = batch["slots"][row][batch["slots"][row] >= 0]
        words = ids[r, at][torch.randperm(len(at), generator=gen)]
        ids[r, at] = words
        if not batch["by_word"][row]:
            answers[r] = batch["letter_ids"][int(torch.nonzero(words == batch["heard"][row])[0, 0])]
    return ids, answers


def answer_logits(model, batch: dict, rows, ids: torch.Tensor | None = None, every: bool = False) -> torch.Tensor:
    """Logits at each row's last position (`every`: also all positions, as a second tensor)."""
    ids = batch["input_ids"][rows] if ids is None else ids
    mask = batch["attention_mask"][rows]
    width = int(mask.sum(-1).max())
    out = model(input_ids=ids[:, :width], attention_mask=mask[:, :width],
                input_features=batch["input_features"][rows].float(),
                feature_attention_mask=batch["feature_attention_mask"][rows])
    last = mask[:, :width].sum(-1) - 1
    final = out.logits[torch.arange(len(rows)), last]
    return (final, out.logits) if every else final


def marking_loss(logits: torch.Tensor, batch: dict, rows: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
    """A training aid for the letter task: at each option word, predict that option's letter if it is the
    sound's attribute, else "." (so the option list learns to mark the heard option, which the answer reads)."""
    slots = batch["slots"][rows]
    valid = slots >= 0
    at = slots.clamp(min=0)
    words = ids.gather(1, at)
    target = torch.where(words == batch["heard"][rows, None], batch["letter_ids"][None, : slots.shape[1]],
                         batch["dot_id"])
    picked = logits[torch.arange(len(rows))[:, None], at]
    return F.cross_entropy(picked[valid], target[valid])


@torch.no_grad()
def correct(model, batch: dict, batch_size: int = 100) -> np.ndarray:
    """Whether each item's top-1 answer token is its answer."""
    model.eval()
    preds = []
    for start in range(0, len(batch["answers"]), batch_size):
        rows = torch.arange(start, min(start + batch_size, len(batch["answers"])))
        preds.append(answer_logits(model, batch, rows).argmax(-1))
    return (torch.cat(preds) == batch["answers"]).numpy()


def accuracy(model, batch: dict, hits: np.ndarray | None = None) -> dict[str, float]:
    """Held-out accuracy per attribute asked, and over all items."""
    hits = correct(model, batch) if hits is None else hits
    asked = np.array(batch["asked"])
    report = {a: float(hits[asked == a].mean()) for a in ATTRIBUTES}
    report["all"] = float(hits.mean())
    return report


def length_batches(lengths: torch.Tensor, batch_size: int, gen: torch.Generator):
    """Endless batches of rows of similar length (little padding), in random order."""
    order = torch.argsort(lengths + torch.rand(len(lengths), generator=gen))
    while True:
        chunks = list(order.split(batch_size))
        for k in torch.randperm(len(chunks), generator=gen).tolist():
            yield chunks[k]
        order = torch.argsort(lengths + 3 * torch.rand(len(lengths), generator=gen))


def training_items(clips, task: Task, seed: int) -> list:
    """Each clip asked about two different attributes (the question decides what matters); with `task.mix`,
    that share of the letter items asks for the option word instead (a curriculum aid)."""
    names = list(ATTRIBUTES)
    rng = np.random.default_rng(seed + 1)
    items = []
    for ex in clips:
        other = names[(names.index(ex.asked) + 1 + rng.integers(len(names) - 1)) % len(names)]
        items += [ex, ask(ex, other, rng)]
    if task.mix:
        pick = np.random.default_rng(seed + 2).random(len(items)) < task.mix
        items = [replace(ex, reply="word") if p else ex for ex, p in zip(items, pick)]
    return items


def train(out: Path, steps: int | None = None, n_clips: int = 1500, batch_size: int = 32, lr: float | None = None,
          seed: int = 0, eval_every: int = 300, held_out: int = HELD_OUT_N, task: str = "attributes",
          log=print, threads: int = THREADS) -> dict:
    """Train `task`'s model, save it with its processor and `training_report.json` (held-out accuracy, and the
    loss at every evaluation step).

    Reproducible on CPU: the data, the initialisation and the batch order are seeded, torch runs with
    deterministic algorithms and a fixed number of threads (`threads`, restored afterwards), so the same
    seed, threads and torch build give the same loss bit for bit. What can still change it: another thread
    count (reductions split differently), another torch/MKL build or CPU instruction set."""
    previous = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(threads)
    torch.use_deterministic_algorithms(True)
    try:
        return _train(Path(out), steps, n_clips, batch_size, lr, seed, eval_every, held_out, task, log)
    finally:
        torch.set_num_threads(previous[0])
        torch.use_deterministic_algorithms(previous[1])


def _train(out: Path, steps, n_clips, batch_size, lr, seed, eval_every, held_out, task, log) -> dict:
    spec = TASKS[task]
    steps = spec.steps if steps is None else steps
    lr = spec.lr if lr is None else lr
    torch.manual_seed(seed)
    t0 = time.time()
    processor = build_processor(task)
    model = build_model(seed, task)
    examples = training_items(spec.make(n_clips, seed), spec, seed)
    train_set = encode(processor, examples)
    test_set = encode(processor, spec.make(held_out, HELD_OUT_SEED))
    log(f"data: {len(examples)} training items from {n_clips} clips, {held_out} held-out items "
        f"({time.time() - t0:.0f} s)")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    gen = torch.Generator().manual_seed(seed)
    batches = length_batches(train_set["attention_mask"].sum(-1).float(), batch_size, gen)
    losses = []
    for step in range(1, steps + 1):
        model.train()
        rows = next(batches)
        ids, answers = (redraw_options(train_set, rows, gen) if spec.reshuffle
                        else (train_set["input_ids"][rows], train_set["answers"][rows]))
        if spec.marking:
            final, every = answer_logits(model, train_set, rows, ids, every=True)
            loss = F.cross_entropy(final, answers) + spec.marking * marking_loss(every, train_set, rows, ids)
        else:
            loss = F.cross_entropy(answer_logits(model, train_set, rows, ids), answers)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % eval_every == 0 or step == steps:
            losses.append([step, loss.item()])
            acc = accuracy(model, test_set)
            log(f"step {step:5d}  loss {loss.item():.4f}  held-out accuracy "
                + "  ".join(f"{k} {v:.3f}" for k, v in acc.items()) + f"  ({time.time() - t0:.0f} s)")
    hits = correct(model, test_set)
    acc = accuracy(model, test_set, hits)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    report = dict(accuracy=acc, held_out_seed=HELD_OUT_SEED, held_out_n=held_out, steps=steps, n_clips=n_clips,
                  batch_size=batch_size, lr=lr, seed=seed, seconds=round(time.time() - t0, 1),
                  **({} if task == "attributes" else dict(
                      task=task, layers=spec.layers, width=spec.width, ffn=spec.ffn, mix=spec.mix, init=spec.init,
                      reshuffle=spec.reshuffle, marking=spec.marking,
                      first_150_correct=int(hits[:150].sum()))),  # a fast test checks these items
                  torch=torch.__version__, threads=torch.get_num_threads(), deterministic=True, losses=losses)
    (out / "training_report.json").write_text(json.dumps(report, indent=1))
    log(f"saved to {out}; held-out accuracy {acc}; {report['seconds']} s")
    return report


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--task", default="attributes", choices=sorted(TASKS),
                   help="attributes: answer with the attribute word; letters: answer with the option's letter "
                        "(default: attributes)")
    p.add_argument("--out", help="where to save (default: a new folder, lalm_lens_out/demo_model_retrained or "
                                 "lalm_lens_out/demo_model_letters_retrained (git-ignored); pass lalm_lens/demo_model to replace the bundled model)")
    p.add_argument("--steps", type=int, help="optimizer steps (default: 1800 for attributes, "
                                             f"{TASKS['letters'].steps} for letters)")
    p.add_argument("--clips", type=int, default=1500, help="synthesized training clips (default: 1500)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default: 32)")
    p.add_argument("--lr", type=float, help="peak learning rate (default: the task's)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the initialisation (default: 0)")
    p.add_argument("--threads", type=int, default=THREADS,
                   help=f"torch CPU threads; the loss is reproducible for a fixed count (default: {THREADS})")
    p.add_argument("--eval-every", type=int, default=300, help="steps between held-out evaluations (default: 300)")
    args = p.parse_args(argv)
    train(Path(args.out or TASKS[args.task].out), steps=args.steps, n_clips=args.clips, batch_size=args.batch_size,
          lr=args.lr, seed=args.seed, eval_every=args.eval_every, task=args.task, threads=args.threads)


if __name__ == "__main__":
    main()
