"""The CLI fails fast and briefly: inputs checked before the model loads, one-line errors, documented flags."""

import argparse
import json

import pytest
import soundfile

from lalm_lens import HookedLALM
from lalm_lens.cli import build_parser, main
from tests.tiny_models import clip


@pytest.fixture
def no_model(monkeypatch):
    """Fails if the command loads a model: these errors must come first."""
    monkeypatch.setattr(HookedLALM, "from_pretrained", classmethod(lambda *a, **k: pytest.fail("loaded the model")))


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_missing_and_non_audio_files_before_loading(tmp_path, capsys, no_model):
    base = ["trace", "--model", str(tmp_path), "--prompt", "p", "--answer", "a", "--out", str(tmp_path / "o")]
    assert main(base + ["--audio", str(tmp_path / "nope.wav")]) == 2
    assert error_line(capsys) == f"lalm-lens: error: --audio {tmp_path / 'nope.wav'}: no such file"
    text = tmp_path / "notes.wav"
    text.write_text("this is not audio")
    assert main(base + ["--audio", str(text)]) == 2
    assert "not a readable audio file" in error_line(capsys)


def test_unwritable_out_before_loading(tmp_path, capsys, no_model):
    wav = tmp_path / "a.wav"
    soundfile.write(wav, clip(1.0), 16000)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    args = ["trace", "--model", str(tmp_path), "--audio", str(wav), "--prompt", "p", "--answer", "a"]
    assert main(args + ["--out", str(blocker / "sub")]) == 2
    line = error_line(capsys)
    assert "--out" in line and "cannot write there" in line
    assert main(["trace-dataset", "--items", str(tmp_path / "none.jsonl"), "--out", str(tmp_path / "o")]) == 2
    assert "no such file" in error_line(capsys)
    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps(dict(id="a", audio="a.wav", question="q?", answer="x")) + "\n")
    assert main(["trace-dataset", "--items", str(items), "--out", str(blocker / "sub")]) == 2
    line = error_line(capsys)
    assert "--out" in line and "cannot write there" in line
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n")
    assert main(["trace-dataset", "--items", str(empty), "--out", str(tmp_path / "o")]) == 2
    assert "no usable item" in error_line(capsys)


def test_errors_are_one_line_and_debug_shows_the_traceback(tmp_path, capsys):
    assert main(["verify", str(tmp_path / "absent")]) == 2
    line = error_line(capsys)
    assert line.startswith("lalm-lens: error: CheckpointError:") and "(--debug for the traceback)" in line
    assert main(["--debug", "verify", str(tmp_path / "absent")]) == 2
    assert "Traceback (most recent call last)" in capsys.readouterr().err


def test_hub_failure_says_what_to_do(capsys):
    assert main(["verify", "no-such-owner/no-such-model"]) == 2
    line = error_line(capsys)
    assert "could not download 'no-such-owner/no-such-model'" in line and "pass a local folder or check the network" in line


def test_every_flag_has_help_and_shows_its_default():
    parser = build_parser()
    subparsers = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, sub in subparsers.choices.items():
        text = " ".join(sub.format_help().split())
        for action in sub._actions:
            if not action.option_strings or action.dest == "help":
                continue
            assert action.help, f"{name} {action.option_strings[0]} has no help"
            if action.default not in (None, False):
                assert "default" in action.help or f"(default: {action.default})" in text, (name, action.dest)


def test_ill_posed_traces_exit_non_zero_unless_allowed(tmp_path, capsys):
    args = ["trace", "--corruption", "noise", "--mode", "layers", "--device", "cpu"]
    assert main(args + ["--out", str(tmp_path / "a")]) == 1  # the summary says it once, as its WARNING line
    captured = capsys.readouterr()
    assert "WARNING ill-posed" in captured.out and "--allow-ill-posed" in captured.err
    assert (captured.out + captured.err).count("the corrupted run still predicts the answer") == 1
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert summary["traces"]["layers"]["ill_posed"] is True and isinstance(summary["traces"]["layers"]["clean"], float)
    assert main(args + ["--out", str(tmp_path / "b"), "--allow-ill-posed"]) == 0


def test_training_script_does_not_overwrite_the_bundled_model_by_default():
    from lalm_lens.demo import train

    parser_defaults = {}
    original = train.train
    try:
        train.train = lambda out, **kw: parser_defaults.setdefault("out", out)
        train.main([])
    finally:
        train.train = original
    assert parser_defaults["out"].name == "demo_model_retrained"


@pytest.mark.parametrize("sweep, files", [("audio-time", ["trace_audio_time.json", "audio_time.png"]),
                                          ("heads", ["trace_heads.json", "heads.png"])])
def test_trace_sweeps_write_json_and_a_figure(tmp_path, capsys, sweep, files):
    out = tmp_path / sweep
    assert main(["trace", "--sweep", sweep, "--head-positions", "final", "--out", str(out), "--device", "cpu"]) == 0
    for name in files:
        assert (out / name).is_file(), name
    assert json.loads((out / f"summary_{sweep.replace('-', '_')}.json").read_text())["traces"]  # one per sweep
    assert main(["trace", "--sweep", sweep, "--mode", "tokens", "--out", str(out)]) == 2  # --mode is for positions


def test_lens_command(tmp_path):
    from lalm_lens.tracing import LensResult

    assert main(["lens", "--out", str(tmp_path), "--device", "cpu", "--top-k", "3"]) == 0
    lens = LensResult.load(tmp_path / "lens.json")
    assert len(lens.clean_top[0]) == 3 and (tmp_path / "lens.png").is_file()


def test_hide_template_reaches_the_token_heatmap(tmp_path, monkeypatch):
    from lalm_lens.tracing.results import TokenTrace

    seen = []
    original = TokenTrace.plot

    def spy(self, *args, **kwargs):
        seen.append(kwargs.get("hide_template", False))
        return original(self, *args, **kwargs)

    monkeypatch.setattr(TokenTrace, "plot", spy)
    assert main(["trace", "--mode", "tokens", "--hide-template", "--out", str(tmp_path / "a"), "--device", "cpu"]) == 0
    assert main(["trace", "--mode", "tokens", "--out", str(tmp_path / "b"), "--device", "cpu"]) == 0
    assert seen == [True, False]


@pytest.mark.parametrize("family", ["audio_flamingo3", "qwen2_5_omni"])
def test_trace_and_lens_commands_on_the_newer_families(family, request, tmp_path):
    """The CLI path (prompt through the family's processor, fast engine, figures) on Audio Flamingo 3 and the
    Qwen2.5-Omni thinker, not only `verify`."""
    import warnings

    from lalm_lens.tracing import LensResult, TraceResult
    from tests.tiny_models import ANSWER_PREFIX, PROMPT

    folder = request.getfixturevalue(f"{family}_dir")
    wav = tmp_path / "a.wav"
    soundfile.write(wav, clip(1.5), 16000)
    item = ["--model", str(folder), "--audio", str(wav), "--prompt", PROMPT, "--answer", "male",
            "--answer-prefix", ANSWER_PREFIX, "--device", "cpu"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights: the trace is ill-posed, and says so
        assert main(["trace", *item, "--options", "male", "female", "--mode", "tokens", "--out", str(tmp_path / "t"),
                     "--allow-ill-posed"]) == 0
        assert main(["lens", *item, "--out", str(tmp_path / "l")]) == 0
    result = TraceResult.load(tmp_path / "t" / "trace_tokens.json")
    assert {"audio", "object", "final"} <= set(result.groups.values())
    assert (tmp_path / "t" / "heatmap_tokens.png").is_file()
    lens = LensResult.load(tmp_path / "l" / "lens.json")
    assert len(lens.clean) == len(lens.layers) and lens.audio_positions
