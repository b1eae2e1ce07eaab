"""What a new user hits (issue 28, and issue 20's audio-time padding): figures that show the data, flags never
ignored, `transformer_lens.patching` as documented, dataset results that load back, reproducible training."""

import json
import numpy as np
import pytest
import torch
from transformer_lens import patching
from transformer_lens.utilities import get_act_name

from lalm_lens.cli import main
from lalm_lens.tracing import DatasetResult, IllPosedTraceWarning, Silence, audio_time_trace
PADDING = "padding after the clip"  # the remainder column's label
from tests.tiny_models import ANSWER_PREFIX, PROMPT, clip

pytestmark = pytest.mark.filterwarnings("ignore::lalm_lens.tracing.IllPosedTraceWarning")


# ---------------------------------------------------------------- 28.1 + 20.5: the audio-time figure and padding
@pytest.fixture(scope="module")
def voxtral_time(voxtral):
    """A 1.0 s clip in 0.3 s windows on a tiny Voxtral (which pads every clip to 30 s)."""
    item = voxtral.prepare(clip(1.0, seed=3), PROMPT, answer_prefix=ANSWER_PREFIX, sampling_rate=16000)
    with torch.no_grad():
        top = int(voxtral(item)[0, -1].argmax())
    return voxtral, item, audio_time_trace(voxtral, item, answer=top, window_seconds=0.3), top


def test_audio_time_figure_draws_every_window_on_its_own_span(voxtral_time):
    from matplotlib.collections import QuadMesh

    model, item, result, _ = voxtral_time
    assert [round(b - a, 6) for a, b in result.windows[:-1]] == [0.3, 0.3, 0.3, 0.1]  # the last one partial
    top = result.plot()
    fig = top.figure
    fig.canvas.draw()
    mesh = next(c for c in top.collections if isinstance(c, QuadMesh))
    coords, values = mesh.get_coordinates(), mesh.get_array()  # [layers+1, cols+1, 2], [layers, cols]
    values = np.ma.filled(values.reshape(len(result.layers), -1).astype(float), np.nan)
    edges = coords[0, :, 0]
    for w, (a, b) in enumerate(result.windows[: result.clip_windows]):
        col = [j for j in range(len(edges) - 1) if abs(edges[j] - a) < 1e-9 and abs(edges[j + 1] - b) < 1e-9]
        assert len(col) == 1, f"window {a:.2f}-{b:.2f} s is not drawn at its own span (edges {edges})"
        np.testing.assert_allclose(values[:, col[0]], result.recovery[:, w].numpy(), equal_nan=True)
    assert top.get_xlim() == pytest.approx((0, 1.0))  # the whole clip, nothing past it
    spectrogram = next(ax for ax in fig.axes if ax.get_xlabel() == "time in the clip (s)")
    a, b = top.get_position(), spectrogram.get_position()
    assert (a.x0, a.x1) == pytest.approx((b.x0, b.x1), abs=1e-6)  # one time axis: heatmap and spectrogram aligned
    assert spectrogram.get_xlim() == top.get_xlim()
    pad = next(ax for ax in fig.axes if "padding" in ax.get_title())  # the remainder: its own column
    pad_values = np.ma.filled(pad.collections[0].get_array().astype(float), np.nan).ravel()
    np.testing.assert_allclose(pad_values, result.recovery[:, -1].numpy(), equal_nan=True)


def test_audio_time_sweep_reports_the_padding_after_the_clip(voxtral_time):
    model, item, result, top = voxtral_time
    seconds = item.meta["audio_seconds"][0].tolist()
    audio = item.audio_positions[0].tolist()
    past = [p for p, t in zip(audio, seconds) if t >= 1.0]
    assert result.padding and result.window_positions[-1] == past and len(past) > 300
    swept = sorted(p for ps in result.window_positions for p in ps)
    assert swept == sorted(audio)  # every audio position is in exactly one column
    corrupted = model.prepare_like(item, np.zeros_like(item.waveform))
    with torch.no_grad():
        _, cache = model.run_with_cache(item, names_filter=lambda n: n.endswith("resid_post"))
        for a, layer in enumerate(result.layers):
            name = get_act_name("resid_post", layer)

            def restore(act, hook):
                act[0, past] = cache[name][0, past]
                return act

            expected = model.run_with_hooks(corrupted, fwd_hooks=[(name, restore)])[0, -1].softmax(-1)[top]
            assert abs(float(result.patched[a, -1]) - float(expected)) <= 1e-5
    assert result.token_labels[-1] == PADDING
    assert PADDING in result.summary() and f"{len(past)} audio positions" in result.summary()
    frame = result.to_dataframe()
    assert set(frame["span"]) == {"clip", PADDING} and (frame[frame.span == PADDING].n_positions == len(past)).all()
    numbers = result.numbers()
    assert numbers["padding_after_clip"]["n_positions"] == len(past) and len(numbers["windows"]) == 4


# ---------------------------------------------------------------- 28.2: typed flags are never ignored
@pytest.fixture
def no_model(monkeypatch):
    from lalm_lens import HookedLALM

    monkeypatch.setattr(HookedLALM, "from_pretrained", classmethod(lambda *a, **k: pytest.fail("loaded the model")))


@pytest.mark.parametrize("argv, message", [
    (["trace", "--answer", "high"], "--answer without --audio"),
    (["trace", "--prompt", "Is it loud?", "--options", "a", "b"], "--prompt, --options without --audio"),
    (["lens", "--answer-prefix", "The pitch is"], "--answer-prefix without --audio"),
    (["trace", "--model", "dmeo"], "no model 'dmeo' (not a bundled demo, not a folder here, not a hub id owner/name) "
                                   "(did you mean 'demo'?)"),
    (["trace-dataset", "--model", "demo-leters", "--items", "x.jsonl"], "did you mean 'demo-letters'?"),
    (["trace", "--states", "resid_psot"], "--states resid_psot: not a restorable block state (did you mean "
                                          "'resid_post'?)"),
    (["trace", "--sweep", "audio-time", "--window-seconds", "0"], "--window-seconds must be a positive number"),
])
def test_flags_are_checked_before_any_work(argv, message, tmp_path, capsys, no_model):
    out = tmp_path / "out"
    assert main(argv + ["--out", str(out)]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()  # nothing written: no demo clip, no folder


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0 and capsys.readouterr().out.startswith("lalm-lens ")


class FakeResult:
    """Stands in for a trace result in the command's own plumbing (no model)."""

    ill_posed, settings = False, {}

    def __init__(self, warn=False):
        self.warn = warn

    def save(self, path):
        return path

    def plot(self, **kw):
        import matplotlib.pyplot as plt

        return plt.subplots()[1]

    def summary(self):
        return "WARNING the trace is ill-posed"

    def numbers(self):
        return {}

    def to_html(self, path, audio=None, js=None):  # the page (tests/test_pages.py tests the real ones)
        return path


def test_each_sweep_keeps_its_own_summary_and_ill_posed_warnings_print_once(tmp_path, capsys, monkeypatch):
    import warnings

    import lalm_lens.cli.trace as cli_trace
    import lalm_lens.tracing as tracing

    def warns(*a, **k):
        warnings.warn("the trace is ill-posed", IllPosedTraceWarning)
        return FakeResult()

    monkeypatch.setattr(cli_trace, "load_item", lambda args, out: (None, None, "low", {}))
    for name in ("causal_trace", "audio_time_trace", "head_trace"):
        monkeypatch.setattr(tracing, name, warns)
    for sweep in ("positions", "audio-time", "heads"):
        assert main(["trace", "--sweep", sweep, "--out", str(tmp_path)]) == 0
    assert {p.name for p in tmp_path.glob("summary*.json")} == {"summary.json", "summary_audio_time.json",
                                                                 "summary_heads.json"}
    err = capsys.readouterr().err
    assert "IllPosedTraceWarning" not in err and "warnings.warn" not in err  # the summary's WARNING line only


def test_a_resumed_dataset_run_says_so(tmp_path, capsys, monkeypatch):
    import lalm_lens.cli.trace as cli_trace
    import lalm_lens.tracing as tracing
    from lalm_lens.demo import write_demo_dataset

    items = write_demo_dataset(tmp_path / "data", n=3, seed=1)
    out = tmp_path / "run"
    out.mkdir()
    ids = [json.loads(line)["id"] for line in open(items)]
    (out / "records.jsonl").write_text(json.dumps({"header": {"settings": {}}}) + "\n"
                                       + "".join(json.dumps({"id": i, "status": "ok"}) + "\n" for i in ids[:2]))
    monkeypatch.setattr(cli_trace, "load_model", lambda args: None)
    monkeypatch.setattr(tracing, "trace_dataset", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("stop")))
    main(["trace-dataset", "--items", str(items), "--out", str(out)])
    assert "2 of 3 items already traced there are reused (--overwrite to start over)" in capsys.readouterr().out


# ---------------------------------------------------------------- 28.3: transformer_lens.patching as documented
def test_transformer_lens_patching_takes_a_prepared_input(qwen2_audio):
    model = qwen2_audio
    clean = model.prepare(clip(0.3, seed=9), "Gender?", sampling_rate=16000)  # short: every position is patched
    corrupted = model.prepare_like(clean, np.zeros_like(clean.waveform))
    # the README's code, as written
    _, clean_cache = model.run_with_cache(clean)
    answer = int(model(clean)[0, -1].argmax())
    metric = lambda logits: logits[0, -1].softmax(-1)[answer]  # noqa: E731
    result = patching.get_act_patch_resid_pre(model, corrupted, clean_cache, metric)
    tokens = model.to_str_tokens(clean)
    assert result.shape == (model.cfg.n_layers, clean.seq_len) and len(tokens) == clean.seq_len
    assert tokens == model.tokenizer.convert_ids_to_tokens(clean.input_ids[0].tolist())
    for layer, pos in [(0, 0), (1, clean.seq_len - 1), (0, int(clean.audio_positions[0][2]))]:
        name = get_act_name("resid_pre", layer)

        def restore(act, hook, pos=pos):
            act[0, pos] = clean_cache[name][0, pos]
            return act

        with torch.no_grad():
            expected = metric(model.run_with_hooks(corrupted, fwd_hooks=[(name, restore)]))
        assert abs(float(result[layer, pos]) - float(expected)) <= 1e-5


# ---------------------------------------------------------------- 28.5: dataset results load back
def test_dataset_result_loads_back_and_makes_a_dataframe(tmp_path):
    settings = {"mode": "tokens", "layers": [0, 1], "states": "resid_post"}
    base = dict(audio="a.wav", question="Q?", options=["low", "high"], answer="low", answer_prefix="It is",
                attributes={"pitch": "low"})
    ok = dict(base, id="i1", status="ok", positions=[3, 4, 5], token_labels=["a", "b", "c"],
              groups=["object", "late_prompt", "final"], patched=[[0.1, 0.2, 0.3], [0.4, 0.5, None]],
              recovery=[[0.0, 0.5, 1.0], [0.25, 0.75, None]], group_recovery={"object": [0.0, 0.25]})
    lines = [{"header": {"settings": settings}}, dict(base, id="i1", status="error", error="boom"), ok,
             dict(base, id="i2", status="dropped_clean_wrong")]
    (tmp_path / "records.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))
    result = DatasetResult.load(tmp_path)
    assert [r["id"] for r in result.records] == ["i1", "i2"] and result.counts() == {"ok": 1, "dropped_clean_wrong": 1}
    frame = result.to_dataframe()
    traced = frame[frame.kept]
    assert len(traced) == 2 * 3 and len(frame) == 7  # item x layer x position, and one row for the dropped item
    assert list(traced.columns[:3]) == ["audio", "question", "options"] or "question" in traced.columns
    row = traced[(traced.layer == 1) & (traced.position == 4)].iloc[0]
    assert (row.recovery, row.token, row.group, row["attributes.pitch"]) == (0.75, "b", "late_prompt", "low")
    assert np.isnan(traced[(traced.layer == 1) & (traced.position == 5)].recovery.iloc[0])
    assert frame.columns[0] != "0" and not frame.isna().all(axis=1).any()  # no header row of NaN
    with pytest.raises(FileNotFoundError, match="trace-dataset --out folder"):
        DatasetResult.load(tmp_path / "nowhere")


# ---------------------------------------------------------------- 28.6: reproducible training
@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # two held-out items leave some attributes empty
def test_a_short_seeded_training_run_reproduces_its_logged_loss(tmp_path):
    """The documented seed gives the same loss at every early step whatever the caller's thread setting:
    training fixes its own threads and deterministic algorithms, and logs the losses in its report."""
    from lalm_lens.demo.train import train

    kw = dict(steps=2, n_clips=2, held_out=2, batch_size=2, eval_every=1, seed=0, log=lambda *a: None)
    before = torch.get_num_threads()
    first = train(tmp_path / "a", **kw)
    torch.set_num_threads(1 if before > 1 else 3)  # another caller's setting
    try:
        second = train(tmp_path / "b", **kw)
    finally:
        torch.set_num_threads(before)
    assert torch.get_num_threads() == before and not torch.are_deterministic_algorithms_enabled()  # restored
    assert [s for s, _ in first["losses"]] == [1, 2] and first["losses"] == second["losses"]  # bit for bit
    logged = json.loads((tmp_path / "a" / "training_report.json").read_text())
    assert logged["losses"] == first["losses"] and logged["deterministic"] and logged["threads"] == 2


# ---------------------------------------------------------------- 28.7: examples write outside the repository root
def test_examples_write_under_a_git_ignored_folder_by_default():
    import re
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    defaults = {p.name: re.findall(r'"--out", default="([^"]+)"', p.read_text()) for p in root.glob("examples/*.py")}
    defaults = {name: found for name, found in defaults.items() if found}
    assert defaults and all(d.startswith("lalm_lens_out/") for found in defaults.values() for d in found), defaults
    from lalm_lens.demo.train import TASKS

    assert all(task.out.startswith("lalm_lens_out/") for task in TASKS.values())
    assert "lalm_lens_out/" in (root / ".gitignore").read_text().splitlines()
