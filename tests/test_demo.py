"""The bundled demo model, its training script, and the main command."""

import json

import pytest
import torch

from lalm_lens import HookedLALM
from lalm_lens.cli import main
from lalm_lens.demo import DEMO_DIR
from lalm_lens.demo.synth import ATTRIBUTES, make_examples
from lalm_lens.demo.train import HELD_OUT_SEED


@pytest.fixture(scope="module")
def demo():
    return HookedLALM.from_pretrained("demo", device="cpu")


def test_training_script_runs_a_few_steps_and_saves_a_loadable_checkpoint(tmp_path):
    from transformers import Qwen2AudioForConditionalGeneration

    from lalm_lens.demo.train import train

    logs = []
    report = train(tmp_path / "m", steps=3, n_clips=6, batch_size=4, held_out=8, eval_every=2, log=logs.append)
    assert set(report["accuracy"]) == set(ATTRIBUTES) | {"all"}
    assert any("step     2" in line for line in logs)
    ours = HookedLALM.from_pretrained(tmp_path / "m", device="cpu")
    hf = Qwen2AudioForConditionalGeneration.from_pretrained(tmp_path / "m").eval()
    ex = make_examples(1, seed=5)[0]
    inp = ours.prepare(ex.wave, ex.question, answer_prefix=ex.answer_prefix, sampling_rate=16000)
    with torch.no_grad():
        assert (ours(inp) - hf(**inp).logits).abs().max().item() <= 1e-4


def test_shipped_checkpoint_is_small_and_in_qwen2_audio_format(demo):
    size = sum(f.stat().st_size for f in DEMO_DIR.rglob("*") if f.is_file())
    assert size <= 20 * 2**20
    config = json.loads((DEMO_DIR / "config.json").read_text())
    assert config["model_type"] == "qwen2_audio"
    assert demo.config.family == "qwen2_audio" and demo.processor is not None


@torch.no_grad()
def test_shipped_checkpoint_reproduces_its_recorded_held_out_accuracy(demo):
    report = json.loads((DEMO_DIR / "training_report.json").read_text())
    examples = make_examples(report["held_out_n"], HELD_OUT_SEED)
    correct = {a: [] for a in ATTRIBUTES}
    for start in range(0, len(examples), 50):
        batch = examples[start:start + 50]
        inp = demo.prepare([e.wave for e in batch], [e.question for e in batch], sampling_rate=16000,
                           answer_prefix=[e.answer_prefix for e in batch])
        logits = demo(inp)
        last = inp["attention_mask"].sum(-1) - 1
        preds = logits[torch.arange(len(batch)), last].argmax(-1).tolist()
        for e, p in zip(batch, preds):
            correct[e.asked].append(p == demo.tokenizer.convert_tokens_to_ids(e.answer))
    for attribute, hits in correct.items():
        measured = sum(hits) / len(hits)
        assert abs(measured - report["accuracy"][attribute]) <= 1 / len(hits) + 1e-9, attribute
        assert measured >= 0.95, (attribute, measured)


def test_main_command_traces_the_demo_end_to_end(tmp_path, capsys):
    from PIL import Image

    from lalm_lens.tracing import TraceResult

    out = tmp_path / "out"
    assert main(["trace", "--out", str(out), "--device", "cpu"]) == 0
    printed = capsys.readouterr().out
    assert "P(clean)" in printed and "max RR per group" in printed
    for name in ("heatmap_tokens.png", "recovery_layers.png"):
        with Image.open(out / name) as image:
            assert image.size[0] > 200 and image.size[1] > 100
    tokens = TraceResult.load(out / "trace_tokens.json")
    layers = TraceResult.load(out / "trace_layers.npz")
    assert tokens.mode == "tokens" and layers.mode == "layers"
    assert tokens.p_clean > tokens.p_corrupted  # the trained model hears the answer; silence removes it
    assert json.loads((out / "summary.json").read_text())["model"] == "demo"


def test_demo_data_and_trace_dataset_cli(tmp_path, capsys):
    data = tmp_path / "data"
    assert main(["demo-data", "--out", str(data), "-n", "6"]) == 0
    lines = (data / "items.jsonl").read_text().splitlines()
    assert len(lines) == 6 and (data / json.loads(lines[0])["audio"]).is_file()
    out = tmp_path / "run"
    assert main(["trace-dataset", "--items", str(data / "items.jsonl"), "--out", str(out), "--device", "cpu"]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert sum(summary["counts"].values()) == 6
    if summary["counts"].get("ok"):
        assert len(summary["mean_recovery"]["mean"]) == 6 and (out / "recovery_layers.png").is_file()
    assert "items:" in capsys.readouterr().out
