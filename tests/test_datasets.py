"""Dataset runs are safe to resume, retry and share a folder."""

import json
import os
import socket

import pytest

from lalm_lens import HookedLALM
from lalm_lens.cli import main
from lalm_lens.tracing import GaussianNoise, read_items, trace_dataset
from lalm_lens.tracing.dataset import as_items, stable_id
from lalm_lens.tracing.records import RunLocked, SettingsMismatch

pytestmark = pytest.mark.filterwarnings("ignore::lalm_lens.tracing.IllPosedTraceWarning")


@pytest.fixture(scope="module")
def demo():
    return HookedLALM.from_pretrained("demo", device="cpu")


@pytest.fixture(scope="module")
def items_file(tmp_path_factory):
    from lalm_lens.demo import write_demo_dataset

    return write_demo_dataset(tmp_path_factory.mktemp("data"), n=4, seed=11)


def run(demo, items, out, **kw):
    return trace_dataset(demo, items, out=out, mode="layers", layers=[2, 5], progress=False, **kw)


def test_resume_with_other_settings_is_refused(demo, items_file, tmp_path):
    out = tmp_path / "records.jsonl"
    first = run(demo, items_file, out)
    header = json.loads(out.read_text().splitlines()[0])["header"]
    assert header["schema"] == 2 and header["settings"]["corruption"] == {"kind": "Silence"}
    with pytest.raises(SettingsMismatch, match=r"corruption.kind: 'Silence' -> 'GaussianNoise'.*--overwrite"):
        run(demo, items_file, out, corruption=GaussianNoise(n_samples=2))
    again = run(demo, items_file, out)  # same settings: resumed, nothing traced twice
    assert again.records == first.records and len(out.read_text().splitlines()) == 1 + 4
    noisy = run(demo, items_file, out, corruption=GaussianNoise(n_samples=2), overwrite=True)
    assert noisy.settings["corruption"]["kind"] == "GaussianNoise"


def test_configuration_errors_are_caught_before_the_first_item(demo, items_file, tmp_path):
    out = tmp_path / "records.jsonl"
    for bad, message in ((dict(states="resid_prex"), "states="), (dict(window=0), "window"),
                         (dict(layers=[99]), "outside the valid range")):
        with pytest.raises(ValueError, match=message):
            trace_dataset(demo, items_file, out=out, progress=False, **bad)
    assert not out.exists()


def test_duplicate_ids_are_refused_and_missing_ids_are_stable(items_file, tmp_path):
    lines = [json.loads(x) for x in items_file.read_text().splitlines()]
    with pytest.raises(ValueError, match="duplicate item id"):
        as_items([lines[0], dict(lines[1], id=lines[0]["id"])])
    anonymous = [{k: v for k, v in line.items() if k != "id"} for line in lines]
    ids = [i.id for i in as_items(anonymous)]
    new = dict(anonymous[2], question="Is it loud? Possible options: quiet, medium, loud.")
    inserted = [i.id for i in as_items([new] + anonymous)[1:]]  # a line inserted first shifts no id
    assert ids == inserted == [stable_id(x["audio"], x["question"]) for x in anonymous]
    assert len(set(ids)) == len(ids)


def test_list_of_dicts_keeps_unknown_keys_as_metadata(demo, items_file):
    folder = items_file.parent
    lines = [dict(json.loads(x), audio=str(folder / json.loads(x)["audio"])) for x in items_file.read_text().splitlines()]
    result = trace_dataset(demo, lines[:2], mode="layers", layers=[5], progress=False)
    assert all(r["attribute"] == line["attribute"] for r, line in zip(result.records, lines))


def test_truncated_last_record_is_redone_and_malformed_items_are_skipped(demo, items_file, tmp_path):
    out = tmp_path / "records.jsonl"
    full = run(demo, items_file, out)
    text = out.read_text()
    out.write_text(text[: len(text) - 40])  # killed while writing the last record
    with pytest.warns(UserWarning, match="last line is incomplete"):
        again = run(demo, items_file, out)
    assert [r["id"] for r in again.records] == [r["id"] for r in full.records]
    assert again.records[-1]["recovery"] == pytest.approx(full.records[-1]["recovery"])
    assert len(out.read_text().splitlines()) == 1 + 4
    broken = tmp_path / "items.jsonl"
    lines = items_file.read_text().splitlines()
    broken.write_text("\n".join([lines[0], "{not json", lines[1], json.dumps({"question": "?"})]) + "\n")
    with pytest.warns(UserWarning) as caught:
        items = read_items(broken)
    messages = [str(w.message) for w in caught]
    assert len(items) == 2 and any("items.jsonl line 2 skipped" in m for m in messages)
    assert any("items.jsonl line 4 skipped: " in m and "missing field" in m for m in messages)


def test_a_second_run_on_the_same_folder_is_refused(demo, items_file, tmp_path):
    out = tmp_path / "records.jsonl"
    lock = tmp_path / "records.jsonl.lock"
    lock.write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))  # a live process holds it
    with pytest.raises(RunLocked, match="another run"):
        run(demo, items_file, out)
    lock.write_text(json.dumps({"pid": 2**22 + 12345, "host": socket.gethostname()}))  # its process is gone
    with pytest.warns(UserWarning, match="taking it over"):
        run(demo, items_file, out)
    assert not lock.exists()


def test_cli_exits_non_zero_when_every_item_failed(tmp_path, capsys):
    items = tmp_path / "items.jsonl"
    items.write_text(json.dumps({"id": "a", "audio": "missing.wav", "question": "?", "answer": "low"}) + "\n")
    assert main(["trace-dataset", "--items", str(items), "--out", str(tmp_path / "o"), "--device", "cpu"]) == 1
    assert "every item failed" in capsys.readouterr().err
