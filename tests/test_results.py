"""One result family: the table of kinds, one schema, save/load of every kind, old files migrated on load,
and attention knockout's window (ROME's, centred, as in tracing)."""

import importlib
import json
import math
import pkgutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from transformer_lens.utilities import get_act_name

import lalm_lens
from lalm_lens.pages import BUILT_IN
from lalm_lens.result import KINDS, SCHEMA, Result, result_type
from lalm_lens.tracing import attention_knockout, logit_diff
from lalm_lens.tracing.cells import window_layers
from tests.test_pages import other_results
from tests.tiny_models import ANSWER_PREFIX, PROMPT, clip


def test_the_table_lists_every_result_class_and_every_kind_has_a_page():
    for info in pkgutil.walk_packages(lalm_lens.__path__, "lalm_lens."):
        if ".demo" not in info.name and ".cli" not in info.name:
            importlib.import_module(info.name)
    subclasses, todo = [], [Result]
    while todo:
        for sub in todo.pop().__subclasses__():
            todo.append(sub)
            if sub.__module__.startswith("lalm_lens."):
                subclasses.append(sub)
    assert {f"{c.__module__}:{c.__qualname__}" for c in subclasses if c.kind in KINDS} == set(KINDS.values())
    assert {c.__name__ for c in subclasses if c.kind not in KINDS} == {"TraceResult"}  # the traces' abstract base
    for kind in KINDS:
        assert result_type(kind).kind == kind
    assert set(BUILT_IN) == set(KINDS)
    with pytest.raises(ValueError, match="unknown result kind 'nope'"):
        result_type("nope")


def test_loading_does_not_depend_on_what_was_imported(tmp_path):
    """A fresh interpreter that imports only `lalm_lens.result` reads a knockout and a heads trace."""
    results = other_results()
    paths = [results["knockout"].save(tmp_path / "k.json"), results["heads"].save(tmp_path / "h.npz")]
    code = ("import sys; from lalm_lens.result import Result; "
            "print(' '.join(type(Result.load(p)).__name__ for p in sys.argv[1:]))")
    out = subprocess.run([sys.executable, "-c", code, *map(str, paths)], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["KnockoutResult", "HeadTrace"]


@pytest.mark.parametrize("name", ["layers", "heads", "lens", "knockout", "dataset", "groups"])
def test_every_kind_saves_and_loads_as_itself(name, tmp_path):
    result = other_results()[name]
    path = result.save(tmp_path / f"{name}.json")
    saved = json.loads(path.read_text())
    assert saved["kind"] == result.kind and saved["schema"] == SCHEMA
    back = Result.load(path)
    assert type(back) is type(result) and back.summary() == result.summary()
    assert back.save(tmp_path / "again.json").read_text() == path.read_text()
    assert type(result).load(path).summary() == result.summary()


def test_a_file_of_another_kind_is_refused_with_the_loader_to_use(tmp_path):
    from lalm_lens.tracing import KnockoutResult, LensResult, TraceResult

    results = other_results()
    knock = results["knockout"].save(tmp_path / "k.json")
    with pytest.raises(ValueError, match="is not a trace this lalm-lens reads .*load it with KnockoutResult.load"):
        TraceResult.load(knock)
    with pytest.raises(ValueError, match="is not a knockout this lalm-lens reads .*load it with LensResult.load"):
        KnockoutResult.load(results["lens"].save(tmp_path / "lens.json"))
    with pytest.raises(ValueError, match="is not a logit lens .*load it with TraceResult.load"):
        LensResult.load(results["layers"].save(tmp_path / "t.json"))
    circuit = tmp_path / "circuit.json"
    circuit.write_text(json.dumps({"schema": "lalm-lens/circuit/1", "graph": {}}))
    with pytest.raises(ValueError, match="not a result file this lalm-lens reads \\(schema 'lalm-lens/circuit/1'\\)"):
        Result.load(circuit)
    with pytest.raises(ValueError, match="use .json or .csv"):
        results["knockout"].save(tmp_path / "k.npz")


def test_old_files_are_migrated_on_load(tmp_path):
    """Files as the earlier writers left them: a lalm-lens 0.1 trace (schema 1, `mode`, `p_*`), feature views
    at schema 1, and edge scores under their own schema string without a kind."""
    from lalm_lens.circuits.graph import Graph
    from lalm_lens.circuits.result import EdgeScores
    from lalm_lens.features.views import TopWindows

    layers = other_results()["layers"]
    old = layers.to_json()
    old.pop("kind"), old.pop("recovery")
    old.update(schema=1, mode="layers", p_clean=old.pop("clean"), p_corrupted=old.pop("corrupted"),
               p_patched=old.pop("patched"))
    (tmp_path / "v1.json").write_text(json.dumps(old))
    back = Result.load(tmp_path / "v1.json")
    assert torch.equal(back.patched, layers.patched) and back.clean == layers.clean and back.kind == "layers"

    windows = TopWindows(hook="blocks.0.hook_resid_post", feature=3, window_seconds=0.5, n_items=1, n_windows=2,
                         windows=[dict(item="a", audio="a.wav", start=0.0, end=0.5, activation=1.5, position=4)])
    (tmp_path / "w.json").write_text(json.dumps(dict(windows.to_json(), schema=1)))
    assert TopWindows.load(tmp_path / "w.json") == windows

    graph = Graph(n_layers=1, n_heads=1, n_kv_heads=1, inputs=["audio"])
    scores = torch.arange(float(graph.valid.numel())).view(graph.valid.shape) * graph.valid
    edge = EdgeScores(graph=graph, scores=scores, method="eap", steps=1, clean=0.5, corrupted=0.25, n_items=1,
                      metric="answer_prob", corruption={"kind": "Silence"})
    first = {k: v for k, v in edge.to_json().items() if k != "kind"}
    (tmp_path / "e.json").write_text(json.dumps(dict(first, schema="lalm-lens/edge-scores/1")))
    loaded = Result.load(tmp_path / "e.json")
    assert isinstance(loaded, EdgeScores) and torch.equal(loaded.scores, edge.scores.double())
    assert loaded.to_dataframe().equals(edge.to_dataframe())


def test_a_dataset_summary_without_records_says_to_load_the_folder(tmp_path):
    from lalm_lens.tracing import DatasetResult

    dataset = other_results()["dataset"]
    (tmp_path / "summary.json").write_text(json.dumps(dataset.to_json()))  # what save wrote before schema 2 records
    with pytest.raises(ValueError, match="without its records.*DatasetResult.load\\(folder\\)"):
        DatasetResult.load(tmp_path / "summary.json")


@pytest.fixture(scope="module")
def item(qwen2_audio):
    return qwen2_audio.prepare(clip(1.2, seed=41), PROMPT, answer_prefix=ANSWER_PREFIX, options=["male", "female"],
                               sampling_rate=16000)


def test_knockout_window_is_rome_centred_window(qwen2_audio, item):
    """window=3 cuts layers l-1, l, l+1 (clipped), the same layers a trace's window restores; checked against
    the pattern renormalised by hand over those layers."""
    model, L = qwen2_audio, qwen2_audio.cfg.n_layers
    result = attention_knockout(model, item, answer="male", window=3)
    q, keys = item.seq_len - 1, item.audio_positions[0]
    answer = model.to_single_token("male")

    def cut(pattern, hook):
        pattern[:, :, q, keys] = 0
        return pattern / pattern.sum(-1, keepdim=True)

    for i, layer in enumerate(result.layers):
        cut_layers = window_layers(layer, 3, L)
        assert result.windows[i] == cut_layers and cut_layers == tuple(range(max(0, layer - 1), min(L, layer + 2)))
        with torch.no_grad():
            logits = model.run_with_hooks(item, fwd_hooks=[(get_act_name("pattern", l), cut) for l in cut_layers])
        assert abs(result.knocked[i].item() - logits[0, -1].softmax(-1)[answer].item()) <= 1e-5
    assert "window of 3 layers centred on it" in result.summary()


def test_knockout_carries_its_metric_and_saves(qwen2_audio, item, tmp_path):
    model = qwen2_audio
    prob = attention_knockout(model, item, answer="male")
    diff = attention_knockout(model, item, answer="male", metric=logit_diff(foil="female"))
    male, female = model.to_single_token("male"), model.to_single_token("female")
    with torch.no_grad():
        logits = model(item)[0, -1].float()
    assert diff.clean == pytest.approx((logits[male] - logits[female]).item(), abs=1e-5)
    assert prob.p_clean == prob.clean == pytest.approx(logits.softmax(-1)[male].item(), abs=1e-6)
    assert diff.metric["name"] == "logit_diff" and "logit" in diff.summary()
    with pytest.raises(AttributeError, match="not a probability"):
        diff.p_knocked
    back = Result.load(diff.save(tmp_path / "knockout.json"))
    assert torch.equal(back.knocked, diff.knocked) and back.metric == diff.metric and back.windows == diff.windows
    weird = type(diff)(**{**{k: getattr(diff, k) for k in ("layers", "window", "query_positions", "key_positions",
                                                          "answer", "answer_token", "metric", "settings")},
                          "clean": math.nan, "knocked": diff.knocked * math.inf})
    again = Result.load(weird.save(tmp_path / "nan.json"))
    assert math.isnan(again.clean) and np.array_equal(again.knocked.numpy(), weird.knocked.numpy(), equal_nan=True)
