"""Training a transcoder (input hook -> output hook) with sparsify's SparseCoder(transcode=True): FVU falls,
the report matches a direct computation, the folder is sparsify's (its own reader loads it) plus the output
hook, the spliced transcoder is exact with its error term, and the CLI and bad input."""

import json

import numpy as np
import pytest
import torch

from lalm_lens.cli import main
from lalm_lens.features.formats import load_sae
from lalm_lens.features.training_run import train_sae
from tests.test_sae_training import demo, items  # noqa: F401  (the demo model and its items, fixtures)

IN, OUT = "blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out"


@pytest.fixture(scope="module")
def trained(demo, items, tmp_path_factory):
    out = tmp_path_factory.mktemp("transcoder")
    tc, report = train_sae(demo, items, IN, hook_out=OUT, positions="all", d_sae=64, k=8, steps=80, seed=0, out=out,
                           progress=False)
    return out, tc, report


def test_transcoder_training_lowers_fvu_and_matches_a_direct_computation(trained):
    out, tc, r = trained
    print(f"transcoder: FVU {r['fvu']:.3f} (initial {r['fvu_initial']:.3f}), L0 {r['l0']:.2f}, dead {r['dead']}, "
          f"ΔP {r['delta_p_answer']:+.4f}")
    assert r["kind"] == "transcoder" and r["settings"]["hook_out"] == OUT
    assert r["fvu"] < 0.7 * r["fvu_initial"], r
    assert 0 < r["l0"] <= 8 and np.isfinite(r["delta_p_answer"]) and r["kl"] >= 0
    rows = torch.cat([torch.from_numpy(np.load(out / "activations" / f"shard_{i:06d}.npy")) for i in (4, 5)])
    d = tc.cfg.d_in
    x, y = rows[:, :d], rows[:, d:]
    pred = tc.encode(x) @ tc.W_dec + tc.b_dec  # no input centring for a transcoder
    fvu = ((y - pred) ** 2).sum() / ((y - y.mean(0)) ** 2).sum()
    assert abs(float(fvu.detach()) - r["fvu"]) < 1e-5


def test_folder_is_sparsify_format_with_the_output_hook(trained):
    out, tc, _ = trained
    cfg = json.loads((out / IN / "cfg.json").read_text())
    assert cfg["transcode"] and cfg["hook_name_out"] == OUT and cfg["num_latents"] == 64
    again = load_sae(out / IN)
    assert again.cfg.is_transcoder and again.cfg.hook_name == IN and again.cfg.hook_name_out == OUT
    from lalm_lens.features.train import _sparsify

    _sparsify()
    from sparsify import SparseCoder

    theirs = SparseCoder.load_from_disk(out / IN)  # sparsify's own reader (drops the extra field)
    x = torch.randn(7, tc.cfg.d_in, generator=torch.Generator().manual_seed(0))
    again.use_error_term = False
    with torch.no_grad():
        err = (theirs(x).sae_out - again(x)).abs().max().item()
    assert err <= 1e-5, err


def test_spliced_transcoder_is_exact_with_its_error_term(demo, items, trained):
    _, tc, _ = trained
    item = items[5]
    inp = demo.prepare(item.audio, item.question, answer_prefix=item.answer_prefix, options=item.options)
    with torch.no_grad():
        base = demo(inp)
        with demo.saes([tc]):
            same = demo(inp)
        with demo.saes([tc], use_error_term=False):
            swapped = demo(inp)
    tc.use_error_term = True
    assert (same - base).abs().max() <= 1e-6 and (swapped - base).abs().max() > 1e-4


def test_transcoder_bad_input_and_cli(demo, items, tmp_path, capsys):
    with pytest.raises(ValueError, match="decodes into its input width"):
        train_sae(demo, items, "blocks.1.mlp.hook_post", hook_out=OUT, positions="all", d_sae=16, k=2, steps=1,
                  out=tmp_path / "w", progress=False)
    with pytest.raises(ValueError, match="is the input hook"):
        train_sae(demo, items, IN, hook_out=IN, out=tmp_path / "same", progress=False)
    code = main(["train-sae", "--model", "demo", "--hook", IN, "--hook-out", OUT, "--positions", "all", "-n", "4",
                 "--d-sae", "32", "--k", "4", "--steps", "5", "--out", str(tmp_path / "cli")])
    assert code == 0, capsys.readouterr().err
    assert f"transcoder {IN} -> {OUT}" in capsys.readouterr().out
    assert json.loads((tmp_path / "cli" / IN / "cfg.json").read_text())["hook_name_out"] == OUT
    assert main(["train-sae", "--model", "demo", "--hook", IN, "--hook-out", "blocks.9.nope", "-n", "4",
                 "--out", str(tmp_path / "bad")]) == 2
    assert "--hook-out 'blocks.9.nope'" in capsys.readouterr().err
