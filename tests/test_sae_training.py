"""Training SAEs on audio activations: the bounded store, sparsify's trainer glue, the report, the CLI."""

import json

import numpy as np
import pytest
import torch

from lalm_lens import HookedLALM
from lalm_lens.cli import main
from lalm_lens.demo import write_demo_dataset
from lalm_lens.features.formats import load_sae
from lalm_lens.features.store import collect_activations
from lalm_lens.features.training_run import train_sae
from lalm_lens.tracing.dataset import read_items

HOOK = "blocks.1.hook_resid_post"


@pytest.fixture(scope="module")
def demo():
    return HookedLALM.from_pretrained("demo")


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    return read_items(write_demo_dataset(tmp_path_factory.mktemp("items"), n=6, seed=7))


@pytest.fixture(scope="module")
def trained(demo, items, tmp_path_factory):
    out = tmp_path_factory.mktemp("sae")
    sae, report = train_sae(demo, items, HOOK, d_sae=64, k=4, steps=60, seed=0, out=out, progress=False)
    return out, sae, report


def test_training_lowers_fvu_and_reports_every_number(trained):
    out, sae, r = trained
    assert r["fvu"] < 0.5 * r["fvu_initial"], r  # 60 seeded steps at least halve the held-out FVU
    assert 0 < r["l0"] <= 4 and 0 <= r["dead"] < 64
    for key in ("delta_p_answer", "delta_loss", "kl", "p_answer"):
        assert np.isfinite(r[key]), key
    assert r["kl"] >= 0 and r["items"]["held_out"] == 2 and r["rows"]["held_out"] > 0
    assert json.loads((out / "report.json").read_text())["fvu"] == r["fvu"]


def test_report_numbers_match_a_direct_computation(demo, items, trained):
    out, sae, r = trained
    test = torch.cat([torch.from_numpy(np.load(out / "activations" / f"shard_{i:06d}.npy")) for i in (4, 5)])
    acts = sae.encode(test)
    recons = acts @ sae.W_dec + sae.b_dec
    fvu = ((test - recons) ** 2).sum() / ((test - test.mean(0)) ** 2).sum()
    assert abs(float(fvu.detach()) - r["fvu"]) < 1e-5
    assert abs(float((acts > 0).sum(-1).float().mean()) - r["l0"]) < 1e-6
    item = items[5]  # ΔP of one held-out item, spliced by hand without the error term
    inp = demo.prepare(item.audio, item.question, answer_prefix=item.answer_prefix, options=item.options)
    from lalm_lens.tracing.pipeline import answer_token

    tok, _ = answer_token(demo, inp, item.answer)
    clean = demo(inp)[0, -1].softmax(-1)[tok]
    swap = demo.run_with_hooks(inp, fwd_hooks=[(HOOK, lambda x, hook: sae.decode(sae.encode(x)).to(x.dtype))])
    assert float((swap[0, -1].softmax(-1)[tok] - clean).detach()) == pytest.approx(_one_item_dp(demo, sae, item), abs=1e-6)


def _one_item_dp(demo, sae, item):
    from lalm_lens.features.training_run import splice_effect

    return splice_effect(demo, sae, [item])["delta_p_answer"]


def test_saved_folder_loads_back_with_the_same_outputs(trained):
    out, sae, _ = trained
    again = load_sae(out / HOOK)
    assert again.cfg == sae.cfg and again.cfg.hook_name == HOOK
    x = torch.randn(5, sae.cfg.d_in, generator=torch.Generator().manual_seed(0))
    sae.use_error_term = again.use_error_term = False
    torch.testing.assert_close(again(x), sae(x), rtol=0, atol=0)
    cfg = json.loads((out / HOOK / "cfg.json").read_text())  # sparsify's own writer (SparseCoder.save_to_disk)
    assert cfg["k"] == 4 and cfg["num_latents"] == 64 and cfg["d_in"] == 64 and not cfg["transcode"]


def test_store_honours_its_bound(demo, items, tmp_path):
    full = collect_activations(demo, items, HOOK, tmp_path / "a", positions="all", progress=False)
    per_item = full.bytes / len(items)
    bound = 2.5 * per_item / 2**20
    with pytest.warns(UserWarning, match="store full"):
        store = collect_activations(demo, items, HOOK, tmp_path / "b", positions="all", max_mb=bound, progress=False)
    on_disk = sum(f.stat().st_size - 128 for f in (tmp_path / "b").glob("*.npy"))  # .npy header: 128 bytes
    assert len(store.rows) in (2, 3) and store.bytes <= bound * 2**20 and on_disk == store.bytes
    with pytest.raises(ValueError, match="too small for even one item"):
        collect_activations(demo, items, HOOK, tmp_path / "c", max_mb=1e-4, progress=False)


def test_positions_choose_rows(demo, items, tmp_path):
    counts = {p: sum(collect_activations(demo, items[:1], HOOK, tmp_path / p, positions=p, progress=False).rows)
              for p in ("audio", "text", "all")}
    inp = demo.prepare(items[0].audio, items[0].question, answer_prefix=items[0].answer_prefix,
                       options=items[0].options)
    assert counts["audio"] == int(inp.audio_positions[0].numel()) > 0
    assert counts["audio"] + counts["text"] == counts["all"] == inp.input_ids.shape[1]
    enc = collect_activations(demo, items[:1], "hook_audio_embeds", tmp_path / "enc", positions="audio", progress=False)
    assert enc.rows == [counts["audio"]]
    with pytest.raises(ValueError, match="outside the language model"):
        collect_activations(demo, items[:1], "hook_audio_embeds", tmp_path / "enc2", positions="text", progress=False)


def test_bad_input_refused(demo, items, tmp_path):
    with pytest.raises(ValueError, match="not a hook point"):
        train_sae(demo, items, "blocks.9.hook_resid_post", out=tmp_path / "a", progress=False)
    with pytest.raises(ValueError, match="positions='audo' is not one of"):
        train_sae(demo, items, HOOK, positions="audo", out=tmp_path / "b", progress=False)
    with pytest.raises(ValueError, match="too small"):
        train_sae(demo, items, HOOK, max_mb=1e-4, out=tmp_path / "c", progress=False)
    with pytest.raises(ValueError, match="k=9 must be in 1..d_sae=8"):
        train_sae(demo, items, HOOK, d_sae=8, k=9, steps=1, out=tmp_path / "d", progress=False)


def test_cli_writes_the_sae_and_report(tmp_path, capsys):
    out = tmp_path / "cli"
    code = main(["train-sae", "--model", "demo", "--hook", HOOK, "-n", "4", "--d-sae", "32", "--k", "4",
                 "--steps", "5", "--out", str(out)])
    assert code == 0, capsys.readouterr().err
    assert (out / HOOK / "sae.safetensors").exists() and (out / HOOK / "cfg.json").exists()
    report = json.loads((out / "report.json").read_text())
    assert report["settings"]["d_sae"] == 32 and "FVU" in capsys.readouterr().out
    assert main(["train-sae", "--model", "demo", "--hook", "blocks.7.nope", "-n", "4", "--out", str(tmp_path / "x")]) == 2
    assert "--hook 'blocks.7.nope' is not a hook point" in capsys.readouterr().err
    assert main(["train-sae", "--model", "demo", "--hook", HOOK, "--k", "9", "--d-sae", "8", "--out", str(tmp_path)]) == 2
    assert "--k (9) must not exceed --d-sae (8)" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train-sae", "--model", "demo", "--hook", HOOK, "--positions", "audo"])
