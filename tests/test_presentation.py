"""Results say what they are: titles, labels, the audio span, flat curves, numbers in summary files."""

import json

import numpy as np
import pytest

from lalm_lens import HookedLALM
from lalm_lens.tracing import causal_trace, trace_dataset
from lalm_lens.tracing.plots import heatmap_rows
from lalm_lens.tracing.results import describe_curve

# random tiny models: their traces are ill-posed on purpose (tests that expect the warning use pytest.warns)
pytestmark = pytest.mark.filterwarnings("ignore::lalm_lens.tracing.IllPosedTraceWarning")


@pytest.fixture(scope="module")
def demo():
    return HookedLALM.from_pretrained("demo", device="cpu")


@pytest.fixture(scope="module")
def traces(demo, tmp_path_factory):
    from lalm_lens.demo import demo_example

    audio, prompt, answer, options, prefix = demo_example(tmp_path_factory.mktemp("d") / "a.wav", seed=3)
    inp = demo.prepare(audio, prompt, answer_prefix=prefix, options=options)
    return (causal_trace(demo, inp, answer=answer, mode="tokens"), causal_trace(demo, inp, answer=answer, mode="layers"))


def test_heatmap_names_what_it_shows(traces):
    tokens, _ = traces
    ax = tokens.plot()
    title = ax.get_title()
    assert all(part in title for part in ("demo", f"answer {tokens.answer!r}", "Silence", "restoring resid_post"))
    labels = [t.get_text() for t in ax.get_yticklabels()]
    n_audio = sum(g == "audio" for g in tokens.groups.values())
    audio_rows = [label for label in labels if label.startswith("[")]
    assert audio_rows == [f"[{n_audio} audio tokens, 0–{tokens.settings['duration']:.1f} s]"]
    below = labels.index(audio_rows[0])
    assert labels[below - 1].endswith("<|audio_bos|>") and labels[below + 1].endswith("<|audio_eos|>")
    assert ax.get_xlabel() == "layer" and ax.figure.axes[-1].get_ylabel() == "recovery rate (RR)"
    hidden = tokens.plot(hide_template=True)
    assert not any(tokens.groups[r] == "template" for r in
                   [tokens.positions[r] for r in heatmap_rows(tokens, hide_template=True) if isinstance(r, int)])
    assert len(hidden.get_yticklabels()) < len(labels)


def test_summary_defines_rr_once_and_labels_positions_like_the_heatmap(traces):
    tokens, layers = traces
    text = tokens.summary()
    assert text.count("RR = (m_patched − m_corrupted) / (m_clean − m_corrupted)") == 1
    best = tokens.numbers()["best"]
    assert f"position {tokens.position_label(best['position'])}" in text
    assert tokens.position_label(best["position"]) in [t.get_text() for t in tokens.plot().get_yticklabels()]
    assert "max RR" in layers.summary() or "flat" in layers.summary()


def test_flat_curves_and_ties_are_not_called_peaks():
    assert describe_curve([0.30, 0.31, 0.32], [0, 1, 2]).startswith("flat")
    assert describe_curve([0.1, 1.0, 1.0], [0, 1, 2]) == "max RR 1.00 at layers 1, 2 (tied)"
    assert describe_curve([0.1, 0.9, 0.5], [0, 1, 2]) == "max RR 0.90 at layer 1"
    assert describe_curve([-0.001, 0.0, -0.002], [0, 1, 2]) == "flat: RR between 0.00 and 0.00 at every layer"


def test_dataset_ci_is_left_out_for_a_flat_curve_and_never_prints_minus_zero():
    from lalm_lens.tracing.dataset_result import _ci

    flat = np.array([-0.001, 0.0, 0.001])
    assert _ci(flat, flat - 0.002, flat + 0.002, 1) == ""  # no "95% CI -0.00-0.00" for a flat curve
    mean, lo, hi = np.array([0.1, 0.8]), np.array([-0.001, 0.7]), np.array([0.2, 0.9])
    assert _ci(mean, lo, hi, 0) == " (95% CI at that layer 0.00 to 0.20)"
    assert _ci(mean, lo, hi, 1) == " (95% CI at that layer 0.70 to 0.90)"


def test_dataset_summary_file_holds_numbers_and_the_band_says_ci(demo, tmp_path):
    from lalm_lens.demo import write_demo_dataset

    items = write_demo_dataset(tmp_path / "data", n=4, seed=5)
    result = trace_dataset(demo, items, mode="layers", progress=False)
    summary = json.loads(result.save(tmp_path / "summary.json").read_text())
    curve = summary["mean_recovery"]
    assert all(isinstance(v, (int, float)) for v in curve["mean"] + curve["ci_low"] + curve["ci_high"])
    assert isinstance(curve["flat"], bool) and summary["n_kept"] == len(result.kept)
    assert not any(isinstance(v, str) and " " in v for k, v in summary.items() if k != "settings")
    ax = result.plot()
    assert f"n = {len(result.kept)} items" in ax.get_title()
    assert any(f"95% CI over {len(result.kept)} items" in t.get_text() for t in ax.get_legend().get_texts())
    assert np.isfinite(curve["mean"]).all()
