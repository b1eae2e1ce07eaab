"""The study at scale: items batched in one engine call, torchrun ranks, a killed rank resumed."""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from lalm_lens import HookedLALM
from lalm_lens.tracing import trace_dataset
from lalm_lens.tracing.records import read_records

pytestmark = pytest.mark.filterwarnings("ignore::lalm_lens.tracing.IllPosedTraceWarning")
N_ITEMS = 8


@pytest.fixture(scope="module")
def demo():
    return HookedLALM.from_pretrained("demo", device="cpu")


@pytest.fixture(scope="module")
def items(tmp_path_factory):
    from lalm_lens.demo import write_demo_dataset

    return write_demo_dataset(tmp_path_factory.mktemp("scale"), n=N_ITEMS, seed=21)


def by_id(records):
    return {r["id"]: r for r in records}


def assert_same_records(a, b, tol=1e-6):
    a, b = by_id(a), by_id(b)
    assert sorted(a) == sorted(b)
    for key, ra in a.items():
        rb = b[key]
        assert ra["status"] == rb["status"], key
        if ra["status"] == "ok":
            assert ra["positions"] == rb["positions"]
            assert np.allclose(ra["patched"], rb["patched"], atol=tol, rtol=0), key
            assert abs(ra["clean"] - rb["clean"]) <= tol and abs(ra["corrupted"] - rb["corrupted"]) <= tol


@pytest.fixture(scope="module")
def single(demo, items, tmp_path_factory):
    """The one-process, one-item-at-a-time run every other run must equal."""
    out = tmp_path_factory.mktemp("single") / "records.jsonl"
    return trace_dataset(demo, items, out=out, mode="tokens", filter=None, progress=False).records


@pytest.mark.parametrize("batch_items", [3, "auto"])
def test_batched_items_equal_single_items(demo, items, single, batch_items):
    batched = trace_dataset(demo, items, mode="tokens", batch_items=batch_items, filter=None, progress=False)
    assert_same_records(single, batched.records, tol=1e-6)
    assert all(r["status"] == "ok" for r in batched.records)


def torchrun(items, out, extra=(), wait=True):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
           "-m", "lalm_lens.cli", "trace-dataset", "--items", str(items), "--out", str(out), "--mode", "tokens",
           "--device", "cpu", "--no-filter", *extra]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)


def test_torchrun_two_ranks_equal_one_process(items, single, tmp_path):
    started = time.perf_counter()
    done = torchrun(items, tmp_path / "run")
    assert done.returncode == 0, done.stdout + done.stderr
    header, records = read_records(tmp_path / "run" / "records.jsonl")
    assert header["schema"] == 2 and not list((tmp_path / "run").glob("records.rank*.jsonl"))
    assert_same_records(single, records)
    assert len(records) == N_ITEMS and (tmp_path / "run" / "summary.json").is_file()
    print(f"\n[torchrun] 2 ranks (gloo), {N_ITEMS} items: {time.perf_counter() - started:.1f} s")


def test_a_killed_rank_resumes_without_loss_or_duplicates(items, single, tmp_path):
    out = tmp_path / "run"
    proc = torchrun(items, out, wait=False)
    rank1 = out / "records.rank1.jsonl"
    deadline = time.time() + 240
    while time.time() < deadline:  # kill rank 1 once it has written one record
        if rank1.exists() and len(rank1.read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    lock = json.loads((out / "records.rank1.jsonl.lock").read_text())
    os.kill(lock["pid"], signal.SIGKILL)
    proc.wait(timeout=120)
    assert proc.returncode != 0
    partial = sum(len(read_records(p, repair=False)[1]) for p in out.glob("records*.jsonl"))
    assert 1 <= partial < N_ITEMS
    done = torchrun(items, out)  # the rerun: resumes, takes over the dead rank's lock
    assert done.returncode == 0, done.stdout + done.stderr
    header, records = read_records(out / "records.jsonl")
    assert len(records) == N_ITEMS and len({r["id"] for r in records}) == N_ITEMS
    assert_same_records(single, records)
    print(f"\n[torchrun] killed rank 1 after {partial} record(s); the rerun completed the other {N_ITEMS - partial}")


def test_a_different_world_size_resumes_a_torchrun(demo, items, single, tmp_path):
    """Records of a 2-rank run (here: left as rank files, as after a kill) are resumed by one process."""
    out = tmp_path / "records.jsonl"
    first = trace_dataset(demo, items, mode="tokens", filter=None, progress=False, limit=3)
    half, settings = first.records, first.settings
    from lalm_lens.tracing.records import make_header, rank_file

    for rank, chunk in ((0, half[:2]), (1, half[2:])):
        rank_file(out, rank).write_text("\n".join(json.dumps(x) for x in [{"header": make_header(settings)}, *chunk]) + "\n")
    resumed = trace_dataset(demo, items, out=out, mode="tokens", filter=None, progress=False)
    assert_same_records(single, resumed.records)
    assert not list(tmp_path.glob("records.rank*.jsonl")) and len(read_records(out)[1]) == N_ITEMS
