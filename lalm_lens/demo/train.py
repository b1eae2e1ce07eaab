"""Train the demo LALM: a tiny `Qwen2AudioForConditionalGeneration` on synthesized sounds.

Plain PyTorch on the Hugging Face model, so the result is a real Qwen2-Audio
checkpoint (3 s audio window: `max_source_positions` 150 and the feature
extractor's `chunk_length` 3 agree). Seeded; about 10 minutes on 2 CPU cores.

    python -m lalm_lens.demo.train --out lalm_lens/demo_model
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lalm_lens.demo.synth import ATTRIBUTES, MAX_SECONDS, RATE, make_examples, vocabulary

VOCAB_SIZE = 128
AUDIO_TOKEN_ID = VOCAB_SIZE - 1
HELD_OUT_SEED, HELD_OUT_N = 20260, 400


def build_processor():
    from lalm_lens.toy import qwen2_audio_processor

    return qwen2_audio_processor(vocabulary(), VOCAB_SIZE, AUDIO_TOKEN_ID, chunk_length=int(MAX_SECONDS))


def build_model(seed: int):
    from transformers import Qwen2AudioConfig, Qwen2AudioForConditionalGeneration

    config = Qwen2AudioConfig(
        audio_config=dict(model_type="qwen2_audio_encoder", d_model=64, encoder_layers=2, encoder_attention_heads=4,
                          encoder_ffn_dim=256, num_mel_bins=128, max_source_positions=int(MAX_SECONDS * 50)),
        text_config=dict(model_type="qwen2", vocab_size=VOCAB_SIZE, hidden_size=64, intermediate_size=256,
                         num_hidden_layers=6, num_attention_heads=4, num_key_value_heads=4,
                         max_position_embeddings=1024, tie_word_embeddings=False),
        audio_token_index=AUDIO_TOKEN_ID,
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
    return dict(input_ids=out["input_ids"], attention_mask=out["attention_mask"],
                input_features=out["input_features"].half(), feature_attention_mask=out["feature_attention_mask"],
                answers=torch.tensor(answers), asked=[ex.asked for ex in examples])


def answer_logits(model, batch: dict, rows) -> torch.Tensor:
    ids, mask = batch["input_ids"][rows], batch["attention_mask"][rows]
    width = int(mask.sum(-1).max())
    out = model(input_ids=ids[:, :width], attention_mask=mask[:, :width],
                input_features=batch["input_features"][rows].float(),
                feature_attention_mask=batch["feature_attention_mask"][rows])
    last = mask[:, :width].sum(-1) - 1
    return out.logits[torch.arange(len(rows)), last]


@torch.no_grad()
def accuracy(model, batch: dict, batch_size: int = 100) -> dict[str, float]:
    model.eval()
    preds = []
    for start in range(0, len(batch["answers"]), batch_size):
        rows = torch.arange(start, min(start + batch_size, len(batch["answers"])))
        preds.append(answer_logits(model, batch, rows).argmax(-1))
    correct = (torch.cat(preds) == batch["answers"]).numpy()
    asked = np.array(batch["asked"])
    report = {a: float(correct[asked == a].mean()) for a in ATTRIBUTES}
    report["all"] = float(correct.mean())
    return report


def length_batches(lengths: torch.Tensor, batch_size: int, gen: torch.Generator):
    """Endless batches of rows of similar length (little padding), in random order."""
    order = torch.argsort(lengths + torch.rand(len(lengths), generator=gen))
    while True:
        chunks = list(order.split(batch_size))
        for k in torch.randperm(len(chunks), generator=gen).tolist():
            yield chunks[k]
        order = torch.argsort(lengths + 3 * torch.rand(len(lengths), generator=gen))


def train(out: Path, steps: int = 1800, n_clips: int = 1500, batch_size: int = 32, lr: float = 3e-3,
          seed: int = 0, eval_every: int = 300, held_out: int = HELD_OUT_N, log=print) -> dict:
    torch.manual_seed(seed)
    t0 = time.time()
    processor = build_processor()
    model = build_model(seed)
    clips = make_examples(n_clips, seed)
    # Each clip is asked about two different attributes: the question decides what matters.
    names = list(ATTRIBUTES)
    rng = np.random.default_rng(seed + 1)
    examples = []
    for i, ex in enumerate(clips):
        other = names[(names.index(ex.asked) + 1 + rng.integers(len(names) - 1)) % len(names)]
        examples += [ex, type(ex)(ex.attributes, other, ex.wave)]
    train_set = encode(processor, examples)
    test_set = encode(processor, make_examples(held_out, HELD_OUT_SEED))
    log(f"data: {len(examples)} training items from {n_clips} clips, {held_out} held-out items "
        f"({time.time() - t0:.0f} s)")
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    warmup = max(1, steps // 20)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    gen = torch.Generator().manual_seed(seed)
    batches = length_batches(train_set["attention_mask"].sum(-1).float(), batch_size, gen)
    for step in range(1, steps + 1):
        model.train()
        rows = next(batches)
        loss = F.cross_entropy(answer_logits(model, train_set, rows), train_set["answers"][rows])
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        if step % eval_every == 0 or step == steps:
            acc = accuracy(model, test_set)
            log(f"step {step:5d}  loss {loss.item():.4f}  held-out accuracy "
                + "  ".join(f"{k} {v:.3f}" for k, v in acc.items()) + f"  ({time.time() - t0:.0f} s)")
    model.eval()
    acc = accuracy(model, test_set)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    report = dict(accuracy=acc, held_out_seed=HELD_OUT_SEED, held_out_n=held_out, steps=steps, n_clips=n_clips,
                  batch_size=batch_size, lr=lr, seed=seed, seconds=round(time.time() - t0, 1),
                  torch=torch.__version__, threads=torch.get_num_threads())
    (out / "training_report.json").write_text(json.dumps(report, indent=1))
    log(f"saved to {out}; held-out accuracy {acc}; {report['seconds']} s")
    return report


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default="demo_model_retrained",
                   help="where to save (default: a new folder; pass lalm_lens/demo_model to replace the bundled model)")
    p.add_argument("--steps", type=int, default=1800, help="optimizer steps (default: 1800)")
    p.add_argument("--clips", type=int, default=1500, help="synthesized training clips (default: 1500)")
    p.add_argument("--batch-size", type=int, default=32, help="batch size (default: 32)")
    p.add_argument("--seed", type=int, default=0, help="seed of the data and the initialisation (default: 0)")
    args = p.parse_args(argv)
    train(Path(args.out), steps=args.steps, n_clips=args.clips, batch_size=args.batch_size, seed=args.seed)


if __name__ == "__main__":
    main()
