"""No silent wrong numbers, round 2: resume by content, metrics that say what they compute, results that
survive any value, no "-0.00", and loading that holds one copy of the weights."""

import json
import math
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from lalm_lens import HookedLALM
from lalm_lens.cli import main
from lalm_lens.tracing import LayerTrace, Swap, TokenTrace, TraceResult, causal_trace, logit_diff, option_prob, trace_dataset
from lalm_lens.tracing.interventions import as_corruption
from lalm_lens.tracing.lens import LensResult
from lalm_lens.tracing.metrics import LogitDiff
from lalm_lens.tracing.records import SettingsMismatch, read_all, read_records

pytestmark = pytest.mark.filterwarnings("ignore::lalm_lens.tracing.IllPosedTraceWarning")


@pytest.fixture(scope="module")
def demo():
    return HookedLALM.from_pretrained("demo", device="cpu")


@pytest.fixture
def items_file(tmp_path):
    from lalm_lens.demo import write_demo_dataset

    return write_demo_dataset(tmp_path / "data", n=2, seed=11)


def run(demo, items, out, **kw):
    return trace_dataset(demo, items, out=out, mode="layers", layers=[5], progress=False, **kw)


def lines(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines() if "header" not in json.loads(line)]


def rewrite(items_file, change):
    rows = [json.loads(line) for line in items_file.read_text().splitlines()]
    change(rows)
    items_file.write_text("".join(json.dumps(r) + "\n" for r in rows))


# ---------------------------------------------------------------- 2. resume matches records by content
def test_resume_redoes_an_item_whose_answer_changed(demo, items_file, tmp_path):
    out = tmp_path / "records.jsonl"
    first = run(demo, items_file, out)
    old = first.records[0]
    other = next(o for o in old["options"] if o != old["answer"])
    rewrite(items_file, lambda rows: rows[0].update(answer=other))
    with pytest.warns(UserWarning, match=rf"1 item\(s\) changed since their records .* traced again: "
                                         rf"'{old['id']}' \(answer '{old['answer']}' -> '{other}'\)"):
        second = run(demo, items_file, out)
    new = {r["id"]: r for r in second.records}[old["id"]]
    assert new["answer"] == other and new["fingerprint"] != old["fingerprint"]
    assert new["clean_top"] == old["clean_top"] and new["answer_token"] != old["answer_token"]
    assert sorted(r["id"] for r in lines(out)) == sorted(r["id"] for r in second.records)  # one record per id


def test_resume_redoes_an_item_whose_audio_changed(demo, items_file, tmp_path):
    out = tmp_path / "records.jsonl"
    first = run(demo, items_file, out)
    a, b = (Path(r["audio"]) for r in first.records)
    shutil.copyfile(b, a)  # the same path, other content
    with pytest.warns(UserWarning, match=rf"'{first.records[0]['id']}' \(its audio's content\)"):
        second = run(demo, items_file, out)
    assert second.records[0]["fingerprint"] != first.records[0]["fingerprint"]
    assert len(lines(out)) == 2


def test_an_unchanged_resume_traces_nothing(demo, items_file, tmp_path, monkeypatch):
    out = tmp_path / "records.jsonl"
    run(demo, items_file, out)
    from lalm_lens.tracing import dataset

    monkeypatch.setattr(dataset, "trace_items", lambda *a, **k: pytest.fail("an unchanged item was traced again"))
    assert len(run(demo, items_file, out).records) == 2


def test_swap_of_a_path_resumes_in_a_new_process(demo, items_file, tmp_path):
    clip = Path(json.loads(items_file.read_text().splitlines()[1])["audio"])
    clip = items_file.parent / clip
    assert Swap(clip).to_dict() == Swap(Path(str(clip))).to_dict() == Swap(str(clip)).to_dict()
    out = tmp_path / "records.jsonl"
    run(demo, items_file, out, corruption=Swap(Path(clip)))
    run(demo, items_file, out, corruption=Swap(Path(clip)))  # a new Swap value, as in a new process: no mismatch
    other = tmp_path / "other.wav"
    shutil.copyfile(items_file.parent / "audio" / "item0000.wav", other)
    with pytest.raises(SettingsMismatch, match="audio_sha1"):
        run(demo, items_file, out, corruption=Swap(other))


@pytest.mark.parametrize("limit", [-1, 0, 1.5, "2", True])
def test_a_negative_or_non_integer_limit_is_refused(demo, items_file, tmp_path, limit):
    with pytest.raises(ValueError, match=r"limit must be a whole number of items >= 1 \(or None for every item\), "
                                         rf"got {limit!r}"):
        run(demo, items_file, tmp_path / "r.jsonl", limit=limit)
    assert not (tmp_path / "r.jsonl").exists()


def test_cli_limit_minus_one_is_refused(items_file, tmp_path, capsys):
    assert main(["trace-dataset", "--items", str(items_file), "--limit", "-1", "--out", str(tmp_path / "o")]) == 2
    assert "--limit must be a whole number of items >= 1, got -1" in capsys.readouterr().err


def test_a_retried_item_leaves_one_record(demo, items_file, tmp_path):
    out = tmp_path / "records.jsonl"
    audio = items_file.parent / "audio" / "item0001.wav"
    kept = audio.read_bytes()
    audio.unlink()
    first = run(demo, items_file, out)
    assert first.counts().get("error") == 1
    audio.write_bytes(kept)
    second = run(demo, items_file, out)
    assert "error" not in second.counts() and len(second.records) == 2
    assert sorted(r["id"] for r in lines(out)) == ["item0000", "item0001"]  # the error line is gone


def test_readers_never_count_an_id_twice(demo, items_file, tmp_path):
    out = tmp_path / "records.jsonl"
    run(demo, items_file, out)
    header, records = read_records(out)
    stale = dict(records[0], status="error", error="old")
    with out.open("a") as f:  # an interrupted retry: the old line, then a newer one for the same id
        f.write(json.dumps(stale) + "\n" + json.dumps(records[0]) + "\n")
    done = read_all(out, header["settings"])
    assert len(done) == 2 and done[records[0]["id"]]["status"] == "ok"
    result = run(demo, items_file, out)
    assert len(result.records) == 2 and sum(result.counts().values()) == 2 and len(lines(out)) == 2


# ---------------------------------------------------------------- 3. metrics say what they compute
@pytest.fixture(scope="module")
def example(tmp_path_factory):
    from lalm_lens.demo import demo_example

    return demo_example(tmp_path_factory.mktemp("demo") / "a.wav", seed=0)


@pytest.fixture(scope="module")
def item(demo, example):
    audio, prompt, answer, options, prefix = example
    return demo.prepare(audio, prompt, answer_prefix=prefix, options=options), answer, options


def test_logit_diff_drops_the_answer_from_its_foils_with_a_warning(demo, item):
    inp, answer, options = item
    other = next(o for o in options if o != answer)
    plain = causal_trace(demo, inp, answer=answer, mode="layers", layers=[5], metric=logit_diff(foil=other))
    with pytest.warns(UserWarning, match=rf"logit_diff\(foil=\['{answer}', '{other}'\]\): the foils include the "
                                         rf"answer \('{answer}', token \d+\); it is dropped from the foils"):
        both = causal_trace(demo, inp, answer=answer, mode="layers", layers=[5], metric=logit_diff(foil=[answer, other]))
    assert both.clean == pytest.approx(plain.clean) and both.corrupted == pytest.approx(plain.corrupted)


def test_a_foil_equal_to_the_answer_is_refused(demo, item):
    inp, answer, _ = item
    with pytest.raises(ValueError, match=rf"logit_diff\(foil='{answer}'\): the foil is the answer \(token \d+\), so "
                                         r"logit\(answer\) − logit\(foil\) is 0 in every run; pass a foil other"):
        causal_trace(demo, inp, answer=answer, mode="layers", layers=[5], metric=logit_diff(foil=answer))
    with pytest.raises(ValueError, match=r"logit_diff\(foil='male'\): the foil is the answer"):
        LogitDiff(answer="male", foil="male")


def test_option_prob_with_duplicate_options_is_refused(demo, example):
    audio, prompt, answer, options, prefix = example
    with pytest.raises(ValueError, match=r"option_prob\(options=\['a', 'b', 'a'\]\): an option is listed twice"):
        option_prob(["a", "b", "a"])
    twice = demo.prepare(audio, prompt, answer_prefix=prefix, options=[answer, *options])
    with pytest.raises(ValueError, match=rf"option_prob: the options '{answer}' and '{answer}' are the same token"):
        causal_trace(demo, twice, answer=answer, mode="layers", layers=[5], metric="option_prob")


def test_swap_of_an_array_without_a_rate_warns_as_prepare_does():
    with pytest.warns(UserWarning, match="Swap\\(audio\\) got an array without sampling_rate; assuming it is at "
                                         "the model's rate"):
        as_corruption(Swap(np.zeros(16000, dtype=np.float32)))
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        as_corruption(Swap(np.zeros(16000, dtype=np.float32), sampling_rate=16000))


@pytest.mark.parametrize("corruption", ["silence", "noise", "snr"])
def test_a_text_only_input_has_no_audio_to_corrupt(demo, corruption):
    inp = demo.prepare(None, "Is the pitch high or low?")
    with pytest.raises(ValueError, match=r"this input has no audio to corrupt \(\w+\(\) replaces or perturbs the "
                                         r"audio\): prepare it with audio"):
        causal_trace(demo, inp, corruption, answer=0, mode="layers", layers=[5])


# ---------------------------------------------------------------- 4. saved results survive any value
def traces():
    nan, inf = math.nan, math.inf
    common = dict(layers=[0, 1], positions=[3, 4], token_labels=["a", "b"], groups={3: "object", 4: "final"},
                  states="resid_post", answer="a", answer_token=1, str_tokens=["x", "y", "z", "a", "b"])
    return [LayerTrace(clean=nan, corrupted=0.1, patched=torch.tensor([0.2, nan]), **common),
            LayerTrace(clean=inf, corrupted=-inf, patched=torch.tensor([inf, -inf]), **common),
            TokenTrace(clean=1.0, corrupted=0.0, patched=torch.tensor([[nan, inf], [-inf, 0.5]]), **common)]


@pytest.mark.parametrize("suffix", [".json", ".npz"])
@pytest.mark.parametrize("case", [0, 1, 2])
def test_nan_and_inf_results_save_load_and_print_as_before(tmp_path, suffix, case):
    import matplotlib

    matplotlib.use("Agg")
    result = traces()[case]
    loaded = TraceResult.load(result.save(tmp_path / f"r{suffix}"))
    for name in ("clean", "corrupted"):
        a, b = getattr(result, name), getattr(loaded, name)
        assert a == b or (math.isnan(a) and math.isnan(b))
    assert torch.equal(result.patched.isnan(), loaded.patched.isnan())
    assert torch.equal(result.patched.nan_to_num(), loaded.patched.nan_to_num())
    assert loaded.summary() == result.summary()
    assert loaded.to_dataframe().equals(result.to_dataframe())
    assert loaded.plot() is not None


def test_a_metric_that_gives_nan_saves_and_loads(demo, item, tmp_path):
    inp, answer, _ = item
    result = causal_trace(demo, inp, answer=answer, mode="layers", layers=[4, 5],
                          metric=lambda logits: torch.full((logits.shape[0],), math.nan))
    loaded = TraceResult.load(result.save(tmp_path / "nan.json"))
    assert math.isnan(loaded.clean) and loaded.summary() == result.summary()


def lens(**kw):
    values = dict(layers=[0, 1], answer="a", answer_token=1, metric={"name": "answer_prob"}, clean=[math.nan, -0.0001],
                  corrupted=[math.inf, 0.5], clean_top=[[["a", math.nan, 1]], [["a", -0.001, 1]]], corrupted_top=None,
                  audio_positions=[], audio_seconds=None, audio_rank=[[], []])
    return LensResult(**dict(values, **kw))


def test_a_lens_with_nan_saves_and_loads(tmp_path):
    result = lens()
    loaded = LensResult.load(result.save(tmp_path / "lens.json"))
    assert loaded.summary() == result.summary()
    assert math.isnan(loaded.clean[0]) and loaded.corrupted[0] == math.inf
    assert loaded.to_dataframe().equals(result.to_dataframe())


def test_lens_load_of_another_kinds_npz_is_a_clear_error(tmp_path):
    path = traces()[2].save(tmp_path / "trace.npz")
    with pytest.raises(ValueError, match=r"trace.npz is a NumPy archive, not a logit lens \(a logit lens is saved as "
                                         r"\.json by LensResult.save\); load trace results with TraceResult.load"):
        LensResult.load(path)
    json_trace = traces()[2].save(tmp_path / "trace.json")
    with pytest.raises(ValueError, match="is not a logit lens this lalm-lens reads .*load it with TraceResult.load"):
        LensResult.load(json_trace)


def test_no_summary_prints_minus_zero():
    common = dict(layers=[0, 1], positions=[3, 4], token_labels=["a", "b"], groups={3: "object", 4: "late_prompt"},
                  states="resid_post", answer="a", answer_token=1, clean=1.0, corrupted=0.0)
    tokens = TokenTrace(patched=torch.tensor([[0.3, -0.001], [0.2, -0.004]]), **common)
    layers = LayerTrace(patched=torch.tensor([-0.001, 0.3]), **common)
    for text in (tokens.summary(), layers.summary(), lens().summary()):
        assert "-0.00" not in text
    assert "late_prompt 0.00" in tokens.summary() and "0: 0.00, 1: 0.30" in layers.summary()


def test_cli_trace_of_demo_letters_prints_no_minus_zero(tmp_path, capsys):
    assert main(["trace", "--model", "demo-letters", "--mode", "tokens", "--out", str(tmp_path), "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "max RR per group:" in out and "late_prompt" in out and "-0.00" not in out


# ---------------------------------------------------------------- 6. loading holds one copy of the weights
def test_loading_peak_memory_stays_near_one_copy_of_the_weights(tmp_path):
    """A bf16 checkpoint with a 151936 x 256 embedding and head, loaded in float32 (~310 MB of weights): the
    peak above the imports stays near the weights (it was ~2x when whole-tensor copies were held)."""
    from tests.big_checkpoint import load_peak, real_width, write_checkpoint

    small = dict(hidden_size=256, intermediate_size=512, num_attention_heads=4, num_key_value_heads=4)
    audio = dict(d_model=64, encoder_attention_heads=2, encoder_ffn_dim=128)
    config, model_cls = real_width("qwen2_audio", lm_layers=1, encoder_layers=1, audio=audio, **small)
    write_checkpoint(tmp_path / "big", config, model_cls)
    tiny, _ = real_width("qwen2_audio", lm_layers=1, encoder_layers=1, audio=audio, vocab_size=1024, **small)
    tiny.audio_token_index = 1000
    write_checkpoint(tmp_path / "tiny", tiny, model_cls)
    stats = load_peak(tmp_path / "big", "float32", warmup=tmp_path / "tiny")
    assert stats["params"] > 300e6
    assert stats["ratio"] <= 1.6, stats
