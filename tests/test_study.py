"""`lalm-lens study`: models x item sets x corruptions x modes, end to end on the demo model."""

import json

import pytest

from lalm_lens.cli import main
from lalm_lens.study import StudyConfigError, read_study

pytestmark = pytest.mark.filterwarnings("ignore::lalm_lens.tracing.IllPosedTraceWarning")

CONFIG = """
out = "out"
modes = ["layers", "tokens"]
corruptions = ["silence"]
[trace]
batch_items = 2
[[models]]
name = "demo"
path = "demo"
[[item_sets]]
name = "pitch set"
items = "a/items.jsonl"
limit = 3
[[item_sets]]
name = "other set"
items = "b/items.jsonl"
limit = 3
"""


@pytest.fixture(scope="module")
def study_dir(tmp_path_factory):
    from lalm_lens.demo import write_demo_dataset

    root = tmp_path_factory.mktemp("study")
    write_demo_dataset(root / "a", n=3, seed=31)
    write_demo_dataset(root / "b", n=3, seed=32)
    (root / "study.toml").write_text(CONFIG)
    return root


def test_study_end_to_end_and_resume(study_dir, capsys, monkeypatch):
    assert main(["study", str(study_dir / "study.toml"), "--device", "cpu"]) == 0
    out = study_dir / "out"
    report = (out / "report.md").read_text()
    assert "| model | items kept / traced |" in report and "pitch set · silence" in report
    for name in ("layers_pitch_set_silence.png", "groups_demo_other_set_silence.png", "heatmap_demo_pitch_set_silence.png"):
        assert (out / "figures" / name).is_file(), name
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"demo / pitch set / silence / layers", "demo / pitch set / silence / tokens",
                            "demo / other set / silence / layers", "demo / other set / silence / tokens"}
    assert (out / "demo" / "pitch_set" / "silence" / "tokens" / "records.jsonl").is_file()
    import lalm_lens.tracing.dataset as ds

    monkeypatch.setattr(ds, "start_item", lambda *a: pytest.fail("a finished study traced an item again"))
    assert main(["study", str(study_dir / "study.toml"), "--device", "cpu"]) == 0  # resumed: nothing to do
    assert "of 3 items kept" in capsys.readouterr().out


@pytest.mark.parametrize("change, message", [
    (("limit = 3", "limit = 3\nsize = 2"), "unknown key"),
    (('path = "demo"', 'dtype = "float32"'), "needs path"),
    (('corruptions = ["silence"]', 'corruptions = ["thunder"]'), "unknown corruption"),
    (('modes = ["layers", "tokens"]', 'modes = ["heads"]'), "modes must be"),
    (("[trace]", "[trace]\nnoise_scale = 3"), "unknown key"),
])
def test_study_files_are_checked_before_any_model_loads(study_dir, tmp_path, change, message):
    bad = tmp_path / "bad.toml"
    bad.write_text(CONFIG.replace(*change, 1))
    with pytest.raises(StudyConfigError, match=message):
        read_study(bad)


def test_yaml_study_files_read_the_same(study_dir, tmp_path):
    yaml_text = "out: out\nmodes: [layers]\nmodels:\n  - {name: demo, path: demo}\nitem_sets:\n  - {name: s, items: x.jsonl}\n"
    (tmp_path / "s.yaml").write_text(yaml_text)
    study = read_study(tmp_path / "s.yaml")
    assert study.modes == ["layers"] and study.item_sets[0].items == str(tmp_path / "x.jsonl")
