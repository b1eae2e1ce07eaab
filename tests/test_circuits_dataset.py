"""Edge attribution over a dataset: padded batches of different audio lengths, torchrun ranks, chunked senders."""

import os
import subprocess
import sys
import textwrap

import pytest
import soundfile
import torch

from lalm_lens.circuits import Graph, edge_attribution
from lalm_lens.circuits.attribution import EdgeSums
from lalm_lens.circuits.batch import EdgeBatch, sender_chunk
from lalm_lens.circuits.runs import edge_item
from lalm_lens.tracing import GaussianNoise, Item, Silence
from lalm_lens.tracing.pipeline import TraceSpec
from tests.tiny_models import ANSWER_PREFIX, PROMPT, clip

OPTIONS = ["male", "female"]
LENGTHS = (0.6, 1.4, 0.6)  # two audio lengths: the batch pads the short items


def prepare(model, seconds, seed):
    inp = model.prepare(clip(seconds, seed=seed), PROMPT, answer_prefix=ANSWER_PREFIX, options=OPTIONS,
                        sampling_rate=16000)
    with torch.no_grad():
        answer = int(model(inp)[0, -1].argmax())
    return inp, answer


@pytest.fixture(scope="module")
def pairs(qwen2_audio):
    return [prepare(qwen2_audio, s, seed=10 + k) for k, s in enumerate(LENGTHS)]


def max_delta(a, b) -> float:
    return float((a.scores - b.scores).abs().max())


def report(name, delta):
    print(f"\n[{name}] max |Δ| = {delta:.2e}")


def some_edges(graph, n=12):
    """A spread of edges (exact patching of every edge would be slow here): every kind of receiver."""
    picks = []
    for kind in ("q", "k", "v", "mlp", "logits"):
        cols = [r for r, rec in enumerate(graph.receivers) if rec.kind == kind]
        for r in cols[:: max(1, len(cols) // 2)][:2]:
            for s in graph.valid[:, r].nonzero()[:, 0].tolist()[:: 3][:2]:
                picks.append((graph.senders[s], graph.receivers[r].name))
    return picks[:n] + [("audio", "logits")]


@pytest.mark.parametrize("method,steps,corruption", [
    ("eap", 1, Silence()),
    ("eap-ig-inputs", 3, GaussianNoise(scale=3.0, n_samples=2, seed=4)),
    ("eap-ig-activations", 2, Silence()),
    ("exact", 1, GaussianNoise(scale=3.0, n_samples=2, seed=4)),
])
def test_a_padded_batch_equals_one_item_at_a_time(qwen2_audio, pairs, method, steps, corruption):
    lengths = {p[0]["input_ids"].shape[1] for p in pairs}
    assert len(lengths) == 2, "the items must have two lengths"
    kw = dict(method=method, steps=steps)
    if method == "exact":
        kw["edges"] = some_edges(Graph.from_model(qwen2_audio))
    one = edge_attribution(qwen2_audio, pairs, corruption, batch_size=1, **kw)
    batched = edge_attribution(qwen2_audio, pairs, corruption, batch_size=3, **kw)
    by_item = [edge_attribution(qwen2_audio, inp, corruption, answer=a, **kw) for inp, a in pairs]
    mean = sum(r.scores for r in by_item) / len(by_item)
    assert one.scores.abs().max() > 1e-4
    assert batched.n_items == one.n_items == 3
    delta = max(max_delta(one, batched), float((one.scores - mean).abs().max()))
    report(f"batched vs one at a time, {method}", delta)
    assert delta <= 1e-5
    assert batched.clean == pytest.approx(one.clean, abs=1e-6)
    assert batched.corrupted == pytest.approx(one.corrupted, abs=1e-6)
    assert one.clean == pytest.approx(sum(r.clean for r in by_item) / 3, abs=1e-9)


def test_by_position_scores_batch_too(qwen2_audio, pairs):
    one = edge_attribution(qwen2_audio, pairs, method="eap", by_position=True, batch_size=1)
    batched = edge_attribution(qwen2_audio, pairs, method="eap", by_position=True, batch_size=2)
    assert one.scores.ndim == 3
    delta = max_delta(one, batched)
    report("batched vs one at a time, by position", delta)
    assert delta <= 1e-5


@pytest.mark.parametrize("method", ["eap", "eap-ig-activations", "exact"])
def test_senders_in_chunks_equal_all_at_once(qwen2_audio, pairs, method):
    graph = Graph.from_model(qwen2_audio)
    spec = TraceSpec(qwen2_audio, corruption=Silence(), engine="reference")
    batch = EdgeBatch.of(qwen2_audio, [edge_item(qwen2_audio, graph, spec, *p) for p in pairs[:2]])
    per_sender_gib = 2 * batch.width * qwen2_audio.cfg.d_model * 4 / 2 ** 30
    budget = 3.5 * per_sender_gib  # three senders a chunk
    assert sender_chunk(len(graph.senders), batch, qwen2_audio.cfg.d_model, torch.float32, budget) == 3
    kw = dict(method=method, steps=2 if method.startswith("eap-ig") else 1, batch_size=2)
    if method == "exact":
        kw["edges"] = some_edges(graph)
    whole = edge_attribution(qwen2_audio, pairs[:2], **kw)
    chunked = edge_attribution(qwen2_audio, pairs[:2], max_delta_gib=budget, **kw)
    delta = max_delta(whole, chunked)
    report(f"chunked vs whole, {method}", delta)
    assert whole.scores.abs().max() > 1e-4 and delta <= 1e-6


def test_dataset_items_are_prepared_and_scored(qwen2_audio, pairs, tmp_path):
    items = []
    for k, (seconds, (inp, answer)) in enumerate(zip(LENGTHS, pairs)):
        path = tmp_path / f"clip{k}.wav"
        soundfile.write(path, clip(seconds, seed=10 + k), 16000, subtype="FLOAT")
        items.append(Item(id=f"i{k}", audio=str(path), question=PROMPT, answer=answer, options=OPTIONS,
                          answer_prefix=ANSWER_PREFIX))
    from_items = edge_attribution(qwen2_audio, items, method="eap", batch_size=2)
    from_pairs = edge_attribution(qwen2_audio, pairs, method="eap")
    delta = max_delta(from_items, from_pairs)
    report("dataset items vs prepared pairs", delta)
    assert delta <= 1e-5
    from lalm_lens.circuits import faithfulness_curve

    a = faithfulness_curve(qwen2_audio, from_pairs, [30], items).faithfulness[0]
    b = faithfulness_curve(qwen2_audio, from_pairs, [30], pairs).faithfulness[0]
    assert a == pytest.approx(b, abs=1e-6)


def test_rank_sums_add_up(qwen2_audio, pairs):
    """The partial sums two ranks would hold add up to the one-process result (the all-reduce is a sum)."""
    from lalm_lens.circuits.attribution import batch_scores
    from lalm_lens.tracing.distributed import Dist

    graph = Graph.from_model(qwen2_audio)
    spec = TraceSpec(qwen2_audio, corruption=Silence(), engine="reference")
    total = EdgeSums(torch.zeros(graph.valid.shape, dtype=torch.float64))
    for rank in range(2):
        share = Dist(rank=rank, world=2).share(pairs)
        total.add(batch_scores(qwen2_audio, graph, [edge_item(qwen2_audio, graph, spec, *p) for p in share], "eap", 1))
    single = edge_attribution(qwen2_audio, pairs, method="eap")
    assert total.n == 3
    delta = float((total.scores / total.n - single.scores).abs().max())
    report("two rank shares summed vs one process", delta)
    assert delta <= 1e-6 and total.clean / 3 == pytest.approx(single.clean, abs=1e-9)


def test_bad_batch_settings_are_refused(qwen2_audio, pairs):
    with pytest.raises(ValueError, match="batch_size"):
        edge_attribution(qwen2_audio, pairs, method="eap", batch_size=0)
    with pytest.raises(ValueError, match="max_delta_gib"):
        edge_attribution(qwen2_audio, pairs, method="eap", max_delta_gib=-1)
    with pytest.raises(TypeError, match="answers"):
        edge_attribution(qwen2_audio, [Item(id="a", audio="x.wav", question="q", answer=1)], answer=1)


SCRIPT = """
import sys, torch
from lalm_lens import HookedLALM
from lalm_lens.circuits import edge_attribution
from tests.test_circuits_dataset import prepare, LENGTHS
torch.set_num_threads(1)
model = HookedLALM.from_pretrained(sys.argv[1], device="cpu")
pairs = [prepare(model, s, seed=10 + k) for k, s in enumerate(LENGTHS)]
res = edge_attribution(model, pairs, method="eap-ig-inputs", steps=2, batch_size=2)
import torch.distributed as td
if td.get_rank() == 0:
    torch.save(dict(scores=res.scores, clean=res.clean, corrupted=res.corrupted, n=res.n_items), sys.argv[2])
"""


def test_torchrun_two_ranks_equal_one_process(qwen2_audio, qwen2_audio_dir, pairs, tmp_path):
    script = tmp_path / "ranks.py"
    script.write_text(textwrap.dedent(SCRIPT))
    out = tmp_path / "scores.pt"
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
               PYTHONPATH=os.pathsep.join([os.getcwd(), os.environ.get("PYTHONPATH", "")]))
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script), str(qwen2_audio_dir), str(out)], env=env, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    ranks = torch.load(out)
    single = edge_attribution(qwen2_audio, pairs, method="eap-ig-inputs", steps=2)
    assert ranks["n"] == 3
    delta = float((ranks["scores"] - single.scores).abs().max())
    report("torchrun 2 ranks vs one process", delta)
    assert delta <= 1e-5
    assert ranks["clean"] == pytest.approx(single.clean, abs=1e-6)
    assert ranks["corrupted"] == pytest.approx(single.corrupted, abs=1e-6)


def test_drawing_uses_graphviz_only_where_dot_is_installed(qwen2_audio, pairs, monkeypatch):
    import matplotlib.pyplot as plt

    from lalm_lens.circuits import Circuit, draw

    scores = edge_attribution(qwen2_audio, pairs[:1], method="eap")
    circuit = Circuit.top_n(scores, 20)
    monkeypatch.setattr(draw.shutil, "which", lambda name: None)
    assert draw.drawing_backend() == "networkx"
    with pytest.raises(RuntimeError, match="dot"):
        draw.drawing_backend("graphviz")
    ax = circuit.draw()  # the fallback draws
    assert len(ax.collections) >= 1
    plt.close(ax.figure)
    monkeypatch.setattr(draw.shutil, "which", lambda name: "/usr/bin/dot")
    assert draw.drawing_backend() == "graphviz" and draw.drawing_backend("networkx") == "networkx"
    calls = []

    def fake_render(source, fmt="png"):  # what `dot` would be given; a blank image back
        import io

        import matplotlib.image as mpimg
        import numpy as np

        calls.append(source)
        buf = io.BytesIO()
        mpimg.imsave(buf, np.ones((4, 4, 3)), format="png")
        return buf.getvalue()

    monkeypatch.setattr(draw, "render_dot", fake_render)
    ax = circuit.draw()
    plt.close(ax.figure)
    assert len(calls) == 1 and calls[0] == circuit.to_dot()
    dot = circuit.to_dot()
    inputs = [n for n in circuit.nodes() if n in ("audio", "text")]
    assert inputs, "the top edges reach an input node"
    for n in inputs:
        assert f'"{n}" [fillcolor="{draw.COLOURS[n]}"' in dot
    assert draw.COLOURS["audio"] != draw.COLOURS["text"]
    with pytest.raises(ValueError, match="backend"):
        circuit.draw(backend="svg")
