"""Studies never share, drop or mislabel records; the whole file is checked before any model loads; the report
says what it averages (issue 20.1, 20.4 and 28.4)."""

import json

import numpy as np
import pytest

from lalm_lens.cli import main
from lalm_lens.study import StudyConfigError, read_study
from lalm_lens.tracing import DatasetResult

pytestmark = pytest.mark.filterwarnings("ignore::lalm_lens.tracing.IllPosedTraceWarning")

CONFIG = """
out = "out"
modes = ["layers"]
corruptions = ["silence"]
[trace]
layers = [5]
[[models]]
name = "demo"
path = "demo"
[[item_sets]]
name = "set a"
items = "a/items.jsonl"
limit = 1
"""


def write(tmp_path, text, name="study.toml"):
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.fixture
def no_model(monkeypatch):
    from lalm_lens import HookedLALM

    monkeypatch.setattr(HookedLALM, "from_pretrained", classmethod(lambda *a, **k: pytest.fail("loaded the model")))


@pytest.mark.parametrize("change, message", [
    (('path = "demo"', 'path = "demo"\ndtype = "bfloat61"'),
     "study.toml models[0] dtype: 'bfloat61' is not a dtype (did you mean 'bfloat16'?)"),
    (("limit = 1", 'limit = "3"'), "study.toml item_sets[0] limit must be an integer >= 1, got '3'"),
    (("limit = 1", "limit = 0"), "item_sets[0] limit must be an integer >= 1"),
    (("limit = 1", "limti = 1"), "item_sets[0]: unknown key 'limti' (did you mean 'limit'?)"),
    (('path = "demo"', 'path = "demo"\ndtyp = "float32"'), "models[0]: unknown key 'dtyp' (did you mean 'dtype'?)"),
    (('out = "out"', 'otu = "out"'), "unknown key 'otu' (did you mean 'out'?)"),
    (("layers = [5]", 'layers = [5]\nstates = "resid_psot"'), "[trace] states: 'resid_psot' is not a restorable "
                                                             "block state (did you mean 'resid_post'?)"),
    (("layers = [5]", 'layers = [5]\nmetric = "logit_dif"'), "[trace] metric: unknown metric 'logit_dif' (did you "
                                                            "mean 'logit_diff'?)"),
    (("layers = [5]", "layers = [5]\nwindow = 0"), "[trace] window must be an integer >= 1, got 0"),
    (("layers = [5]", "layers = [5]\nbatch_items = -2"), "[trace] batch_items (or 'auto') must be an integer >= 1"),
    (("layers = [5]", 'layers = [5]\nengine = "fats"'), "[trace] engine: 'fats' (did you mean 'fast'?)"),
    (("layers = [5]", "layers = [5]\nmin_effect = \"big\""), "[trace] min_effect must be a finite number"),
    (("layers = [5]", 'layers = [5]\nfilter = "all"'), "[trace] filter: 'all'"),
    (("layers = [5]", "layers = [-1]"), "[trace] layers must be an integer >= 0, got -1"),
    (("layers = [5]", "layers = [5]\nwindw = 3"), "[trace]: unknown key 'windw' (did you mean 'window'?)"),
    (('corruptions = ["silence"]', 'corruptions = [{kind = "noise", scal = 3}]'),
     "corruptions[0] (noise): unknown key 'scal' (did you mean 'scale'?)"),
    (('corruptions = ["silence"]', 'corruptions = ["silense"]'), "unknown corruption 'silense' (did you mean "
                                                                 "'silence'?)"),
])
def test_the_whole_study_file_is_checked_before_any_model_loads(tmp_path, capsys, no_model, change, message):
    assert change[0] in CONFIG
    path = write(tmp_path, CONFIG.replace(*change, 1))
    with pytest.raises(StudyConfigError) as err:
        read_study(path)
    assert message in str(err.value)
    assert main(["study", str(path)]) == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


SECOND_SET = '\n[[item_sets]]\nname = "{name}"\nitems = "b/items.jsonl"\n'


@pytest.mark.parametrize("extra, message", [
    (SECOND_SET.format(name="set_a"), "item_sets 'set a' and 'set_a' would write the same run folder set_a/"),
    (SECOND_SET.format(name="Set a"), "item_sets 'set a' and 'Set a' would write the same run folder"),
    (SECOND_SET.format(name="set a"), "item_sets[0] and item_sets[1] are both named 'set a'"),
    ('\n[[models]]\nname = "demo"\npath = "demo-letters"\n', "models[0] and models[1] are both named 'demo'"),
])
def test_names_that_would_share_a_folder_or_a_label_are_refused(tmp_path, extra, message):
    with pytest.raises(StudyConfigError, match="rename one|give each its own name") as err:
        read_study(write(tmp_path, CONFIG + extra))
    assert message in str(err.value)


def test_two_corruptions_with_one_label_are_refused_naming_both(tmp_path):
    text = CONFIG.replace('corruptions = ["silence"]',
                          'corruptions = [{kind = "noise", label = "x"}, {kind = "snr", snr_db = 5, label = "x"}]')
    with pytest.raises(StudyConfigError, match=r"corruptions\[0\] and corruptions\[1\] are both named 'x'"):
        read_study(write(tmp_path, text))


def test_models_can_be_paired_with_their_own_item_sets(tmp_path):
    text = CONFIG + SECOND_SET.format(name="set b") + '\n[[models]]\nname = "letters"\npath = "demo-letters"\n' \
        'item_sets = ["set b"]\n'
    study = read_study(write(tmp_path, text))
    assert [(m.name, s.name) for m, s, _, _ in study.runs()] == [("demo", "set a"), ("demo", "set b"),
                                                                 ("letters", "set b")]
    with pytest.raises(StudyConfigError, match=r"models\[1\] item_sets: no item set named 'set c' \(did you mean"):
        read_study(write(tmp_path, text.replace('item_sets = ["set b"]', 'item_sets = ["set c"]')))


def test_a_changed_setting_is_refused_with_a_remedy_study_offers(tmp_path, capsys):
    from lalm_lens.demo import write_demo_dataset

    write_demo_dataset(tmp_path / "a", n=1, seed=3)
    path = write(tmp_path, CONFIG)
    assert main(["study", str(path), "--device", "cpu"]) == 0
    write(tmp_path, CONFIG.replace("layers = [5]", "layers = [4]"))
    capsys.readouterr()
    assert main(["study", str(path), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "written with other settings" in err and "lalm-lens study --overwrite" in err and "`out =`" in err
    assert "--out" not in err.replace("--overwrite", "")  # `study` has no --out
    assert main(["study", str(path), "--device", "cpu", "--overwrite"]) == 0
    records = (tmp_path / "out" / "demo" / "set_a" / "silence" / "layers" / "records.jsonl").read_text()
    assert json.loads(records.splitlines()[0])["header"]["settings"]["layers"] == [4]


# ---------------------------------------------------------------- the report says what it averages
def record(i, recovery, prompt="p", groups=None):
    groups = groups or {"early_prompt": [0.0, 0.0, 0.0], "object": [0.0, 0.0, 0.0], "final": [0.0, 0.5, 1.0]}
    labels = ["a", prompt, "c"]
    return dict(id=f"i{i}", status="ok", recovery=recovery, token_labels=labels, positions=[0, 1, 2],
                groups=["early_prompt", "object", "final"], group_recovery=groups, audio_span=None)


def test_report_tables_say_flat_tied_and_no_ci_for_one_item(tmp_path, monkeypatch):
    from lalm_lens.study import report
    from lalm_lens.study.config import ItemSet, ModelSpec, Study

    study = Study(out=tmp_path, models=[ModelSpec("one", "demo"), ModelSpec("flat", "demo"),
                                        ModelSpec("tied", "demo")],
                  item_sets=[ItemSet("s", items="x")], corruptions={"silence": None}, modes=["layers", "tokens"])
    layers = [0, 1, 2]
    results = {
        ("one", "s", "silence", "layers"): DatasetResult([record(0, [0.1, 0.9, 0.2])], "layers", layers),
        ("flat", "s", "silence", "layers"): DatasetResult([record(0, [-0.001, 0.0, 0.01]),
                                                           record(1, [0.0, -0.002, 0.0])], "layers", layers),
        ("tied", "s", "silence", "layers"): DatasetResult([record(0, [0.1, 0.8, 0.8]), record(1, [0.2, 0.6, 0.6])],
                                                          "layers", layers),
        ("tied", "s", "silence", "tokens"): DatasetResult(
            [record(k, [[0.0, 0.1, 0.2]] * 3, prompt="p" if k < 2 else "q") for k in range(3)], "tokens", layers),
    }
    saved = {}
    real_save = report.plots.save

    def spy(ax, path):
        saved[path.name] = [(line.get_label(), line.get_color(), line.get_marker(), line.get_linestyle())
                            for line in ax.get_lines() if not line.get_label().startswith("_")]
        saved[path.name + ":title"] = ax.get_title()
        return real_save(ax, path)

    monkeypatch.setattr(report.plots, "save", spy)
    text = report.write_report(study, results).read_text()
    rows = {}
    for line in text.splitlines():  # the layer-wise table comes first
        if line.startswith("| "):
            rows.setdefault(line.split(" | ")[0].strip("| "), line)
    assert "n = 1: no CI" in rows["one"] and "[0.90, 0.90]" not in rows["one"]
    assert rows["flat"] == "| flat | 2 / 2 | flat | flat: 0.00 to 0.01 | – |"  # no peak layer, no -0.00
    assert "tied (1, 2)" in rows["tied"]
    assert "-0.00" not in text
    group_row = next(line for line in text.splitlines() if line.startswith("| tied | 3 |"))
    assert "0.00 (flat)" in group_row and "layer" not in group_row.split("|")[3]  # object: flat, no layer
    assert "1.00 (layer 2)" in group_row
    assert "mean RR over 2 of 3 kept items (those with the most common prompt" in text
    assert "2 of 3 kept items" in saved["heatmap_tied_s_silence.png:title"]
    summary = json.loads((tmp_path / "summary.json").read_text())
    flat = summary["flat / s / silence / layers"]["mean_recovery"]
    assert flat["flat"] and flat["peak_layer"] is None
    assert summary["one / s / silence / layers"]["mean_recovery"]["ci_low"] is None
    assert summary["tied / s / silence / layers"]["mean_recovery"]["tied_layers"] == [1, 2]
    lines = saved["layers_s_silence.png"]  # one colour per model, fixed by the study's order
    colors = report.model_colors(study)
    assert {label.split(" (")[0]: color for label, color, _, _ in lines} == colors
    groups = saved["groups_tied_s_silence.png"]
    assert len({(m, s) for _, _, m, s in groups}) == len(groups)  # coinciding group lines stay distinguishable
    labels = [label for label, *_ in groups]
    assert "object (same values as early_prompt)" in labels and "final" in labels
    assert {label.split(" ")[0]: color for label, color, _, _ in groups}["object"] == "#d62728"  # its fixed colour
