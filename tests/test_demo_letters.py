"""The bundled letter demo model (options shuffled per item, answered by letter), its training, its data."""

import json

import pytest
import torch

from lalm_lens import HookedLALM
from lalm_lens.cli import main
from lalm_lens.demo import DEMO_DIR, DEMO_LETTERS_DIR, demo_example
from lalm_lens.demo.synth import ATTRIBUTES, LETTERS, make_letter_examples
from lalm_lens.demo.train import HELD_OUT_SEED
from lalm_lens.tracing.groups import token_groups

SUBSET = 150  # the first items of the held-out set: enough to check the recorded accuracy, fast


@pytest.fixture(scope="module")
def letters():
    return HookedLALM.from_pretrained("demo-letters", device="cpu")


def folder_size(folder) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def test_bundled_letter_checkpoint_loads_and_both_demos_fit_in_5_mb(letters):
    assert folder_size(DEMO_DIR) + folder_size(DEMO_LETTERS_DIR) <= 5 * 2**20
    assert json.loads((DEMO_LETTERS_DIR / "config.json").read_text())["model_type"] == "qwen2_audio"
    assert letters.config.family == "qwen2_audio" and letters.processor is not None
    assert all(len(letters.tokenizer.encode(t, add_special_tokens=False)) == 1 for t in LETTERS)


@torch.no_grad()
def test_bundled_letter_checkpoint_reproduces_its_recorded_held_out_accuracy(letters):
    report = json.loads((DEMO_LETTERS_DIR / "training_report.json").read_text())
    assert report["task"] == "letters" and min(report["accuracy"][a] for a in ATTRIBUTES) >= 0.95
    examples = make_letter_examples(SUBSET, HELD_OUT_SEED)  # the recorded set's first items
    inp = letters.prepare([e.wave for e in examples], [e.question for e in examples], sampling_rate=16000,
                          answer_prefix=[e.answer_prefix for e in examples])
    last = inp["attention_mask"].sum(-1) - 1
    preds = letters(inp)[torch.arange(len(examples)), last].argmax(-1).tolist()
    hits = [p == letters.tokenizer.convert_tokens_to_ids(e.answer) for e, p in zip(examples, preds)]
    assert sum(hits) == report["first_150_correct"]  # the same model, the same items: the same answers
    for attribute in ATTRIBUTES:
        mine = [h for h, e in zip(hits, examples) if e.asked == attribute]
        assert sum(mine) / len(mine) >= 0.9, attribute


def test_training_script_runs_the_letter_task_and_saves_a_checkpoint_equal_to_hf(tmp_path):
    from transformers import Qwen2AudioForConditionalGeneration

    from lalm_lens.demo.train import train

    logs = []
    report = train(tmp_path / "m", task="letters", steps=2, n_clips=4, batch_size=4, held_out=6, eval_every=1,
                   log=logs.append)
    assert report["task"] == "letters" and set(report["accuracy"]) == set(ATTRIBUTES) | {"all"}
    assert any("step     1" in line for line in logs)
    ours = HookedLALM.from_pretrained(tmp_path / "m", device="cpu")
    hf = Qwen2AudioForConditionalGeneration.from_pretrained(tmp_path / "m", dtype=torch.float32).eval()
    ex = make_letter_examples(1, seed=5)[0]
    inp = ours.prepare(ex.wave, ex.question, answer_prefix=ex.answer_prefix, options=ex.options, sampling_rate=16000)
    with torch.no_grad():
        assert (ours(inp) - hf(**inp).logits).abs().max().item() <= 1e-4


def test_demo_data_letters_answers_by_letter_and_marks_the_option_list_as_object(tmp_path, letters, capsys):
    data = tmp_path / "data"
    assert main(["demo-data", "--task", "letters", "--out", str(data), "-n", "6"]) == 0
    items = [json.loads(line) for line in (data / "items.jsonl").read_text().splitlines()]
    assert len(items) == 6 and "6 letters items" in capsys.readouterr().out
    for item in items:
        assert item["answer"] in LETTERS and item["answer_prefix"] == "The answer is"
        assert sorted(item["options"]) == sorted(ATTRIBUTES[item["attribute"]]["options"])
        assert item["answer"] == LETTERS[item["options"].index(item["attributes"][item["attribute"]])]
        inp = letters.prepare(str(data / item["audio"]), item["question"], answer_prefix=item["answer_prefix"],
                              options=item["options"])
        groups = token_groups(inp)
        words = letters.to_str_tokens(inp.input_ids[0, [i for i, g in enumerate(groups) if g == "object"]])
        # from the first option word to the last: every letter after the first, every option word
        expected = " ".join(f"{letter} . {word}" for letter, word in zip(LETTERS, item["options"])).split()[2:]
        assert words == expected, (words, item["question"])


def test_demo_example_letters(tmp_path):
    path, prompt, answer, options, prefix = demo_example(tmp_path / "clip.wav", seed=3, attribute="pattern",
                                                         task="letters")
    assert answer in LETTERS and sorted(options) == sorted(ATTRIBUTES["pattern"]["options"])
    assert "Options: A. " in prompt and prompt.endswith("Answer with the letter.") and prefix == "The answer is"
    with pytest.raises(ValueError, match="task"):
        demo_example(tmp_path / "x.wav", task="words")


def test_letters_binding_example_splits_the_option_list_into_roles(tmp_path, monkeypatch):
    """The README's binding table comes from this script: roles are disjoint, every option word and
    letter of the list is in one, and the records say which options the item had."""
    import importlib.util
    import sys
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "letters_binding.py"
    spec = importlib.util.spec_from_file_location("letters_binding", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    monkeypatch.setattr(sys, "argv", ["letters_binding.py", "--n", "6", "--out", str(tmp_path)])
    example.main()
    summary = json.loads((tmp_path / "binding.json").read_text())
    assert summary["n_items"] >= 1 and "final token" in summary["roles"]
    assert (tmp_path / "binding.png").is_file() and (tmp_path / "heatmap_first_item.png").is_file()
    records = [json.loads(line) for line in (tmp_path / "records.jsonl").read_text().splitlines()[1:]]
    kept = [r for r in records if r.get("status") == "ok"]
    assert all(r["options"] and r["question"].startswith(("What", "How")) for r in records)
    for record in kept:
        curves = example.role_curves(record)
        n_layers = len(record["recovery"])
        assert all(c.shape == (n_layers,) for c in curves.values())
        heard = record["options"][LETTERS.index(record["answer"])]
        assert heard in record["token_labels"]


def test_trace_command_on_the_letter_demo_uses_a_letter_item(tmp_path, capsys):
    assert main(["trace", "--model", "demo-letters", "--mode", "tokens", "--out", str(tmp_path), "--device", "cpu",
                 "--allow-ill-posed"]) == 0
    printed = capsys.readouterr().out
    assert "Options: A. " in printed and "expected answer: '" in printed
    summary = json.loads((tmp_path / "summary.json").read_text())
    assert summary["model"] == "demo-letters" and summary["answer"] in LETTERS
    assert summary["prompt"].startswith(("What", "How")) and "Options: A. " in summary["prompt"]
