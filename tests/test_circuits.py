"""Edge attribution, exact edge patching and circuits against computations written out here."""

from contextlib import contextmanager

import pytest
import torch

from lalm_lens.circuits import (Circuit, EdgeScores, Graph, edge_attribution, evaluate_circuit, exact_edge_patching,
                                faithfulness_curve, path_patching)
from lalm_lens.circuits.compare import spearman, top_overlap
from lalm_lens.tracing import GaussianNoise, Silence, token_groups
from tests.tiny_models import ANSWER_PREFIX, PROMPT, clip

OPTIONS = ["male", "female"]


@contextmanager
def split_hooks(model):
    for f in ("set_use_attn_result", "set_use_split_qkv_input", "set_use_hook_mlp_in"):
        getattr(model, f)(True)
    try:
        yield
    finally:
        for f in ("set_use_attn_result", "set_use_split_qkv_input", "set_use_hook_mlp_in"):
            getattr(model, f)(False)


def top1(model, inp) -> int:
    with torch.no_grad():
        return int(model(inp)[0, -1].argmax())


@pytest.fixture(scope="module")
def qwen2_audio_mha(qwen2_audio_mha_dir):
    from lalm_lens import HookedLALM

    return HookedLALM.from_pretrained(qwen2_audio_mha_dir, device="cpu")


@pytest.fixture(scope="module")
def gqa_item(qwen2_audio):
    inp = qwen2_audio.prepare(clip(1.0, seed=5), PROMPT, answer_prefix=ANSWER_PREFIX, options=OPTIONS,
                              sampling_rate=16000)
    return inp, top1(qwen2_audio, inp)


@pytest.fixture(scope="module")
def padded_item(qwen2_audio_mha):
    """The shorter row of a batch of two clip lengths, with its padding, as a dict of tensors."""
    batch = qwen2_audio_mha.prepare([clip(0.6, seed=1), clip(1.4, seed=2)], [PROMPT, PROMPT],
                                    answer_prefix=ANSWER_PREFIX, sampling_rate=16000)
    short = int(batch["attention_mask"].sum(-1).argmin())
    row = {k: v[short:short + 1] for k, v in batch.items()}
    assert not bool(row["attention_mask"].all()), "the row must be padded"
    with torch.no_grad():
        logits = qwen2_audio_mha(row)
    last = int(row["attention_mask"][0].nonzero().max())
    return row, int(logits[0, last].argmax())


# ---------------------------------------------------------------- hand-written reference
def sender_value(model, graph, cache, s, masks):
    name = graph.senders[s]
    if name in graph.inputs:
        return cache["blocks.0.hook_resid_pre"] * masks[graph.inputs.index(name)][None, :, None]
    if name.startswith("m"):
        return cache[f"blocks.{int(name[1:])}.hook_mlp_out"]
    layer, head = (int(x) for x in name[1:].split(".h"))
    return cache[f"blocks.{layer}.attn.hook_result"][:, :, head]


def shift_hook(rec, delta):
    """(hook name, fn) adding `delta` [rows, pos, d_model] to the receiver's input."""
    if rec.kind == "logits":
        return f"blocks.{rec.layer - 1}.hook_resid_post", lambda x, hook: x + delta
    if rec.kind == "mlp":
        return f"blocks.{rec.layer}.hook_mlp_in", lambda x, hook: x + delta

    def add(x, hook):
        x = x.clone()
        x[:, :, rec.head] += delta
        return x
    return f"blocks.{rec.layer}.hook_{rec.kind}_input", add


def masks_of(graph, inp):
    groups = token_groups(inp) if hasattr(inp, "spans") else None
    if groups is None:
        audio = inp["input_ids"][0] == 255
        groups = ["audio" if a else "text" for a in audio.tolist()]
    return graph.input_masks(groups)


def by_hand(model, inp, corr_inputs, corr_hooks, answer, edges, final):
    """Exact and EAP scores of `edges`, each from its own hooked forward on the full model."""
    graph = Graph.from_model(model)
    masks = masks_of(graph, inp)
    score = lambda logits: logits[:, final].float().softmax(-1)[:, answer]  # noqa: E731
    with split_hooks(model), torch.no_grad():
        _, clean_cache = model.run_with_cache(inp)
        with model.hooks(fwd_hooks=corr_hooks):
            _, corr_cache = model.run_with_cache(corr_inputs)
        base = float(score(model(inp)).mean())
    exact, eap = {}, {}
    for s, r in edges:
        rec = graph.receivers[r]
        deltas = sender_value(model, graph, corr_cache, s, masks) - sender_value(model, graph, clean_cache, s, masks)
        with split_hooks(model), torch.no_grad():
            vals = [float(score(model.run_with_hooks(inp, fwd_hooks=[shift_hook(rec, d[None])]))) for d in deltas]
        exact[(s, r)] = sum(vals) / len(vals) - base
        eps = torch.zeros((), requires_grad=True)
        with split_hooks(model):
            m = score(model.run_with_hooks(inp, fwd_hooks=[shift_hook(rec, eps * deltas.mean(0)[None])])).sum()
            eap[(s, r)] = float(torch.autograd.grad(m, eps)[0])
    return exact, eap


def sample_edges(graph, n_per_kind=2, seed=0):
    gen = torch.Generator().manual_seed(seed)
    picks = []
    for kind in ("q", "k", "v", "mlp", "logits"):
        cols = [r for r, rec in enumerate(graph.receivers) if rec.kind == kind]
        for _ in range(n_per_kind):
            r = cols[int(torch.randint(len(cols), (1,), generator=gen))]
            rows = graph.valid[:, r].nonzero()[:, 0]
            picks.append((int(rows[int(torch.randint(len(rows), (1,), generator=gen))]), r))
    picks.append((0, len(graph.receivers) - 1))  # audio -> logits
    return picks


# ---------------------------------------------------------------- tests
def test_split_hooks_leave_the_forward_unchanged(qwen2_audio, gqa_item):
    inp, _ = gqa_item
    model = qwen2_audio
    with torch.no_grad():
        base = model(inp)
        with split_hooks(model):
            logits, cache = model.run_with_cache(inp)
    assert (logits - base).abs().max() <= 1e-6 * base.abs().max()
    L, H, G = model.cfg.n_layers, model.cfg.n_heads, model.cfg.n_key_value_heads
    assert G < H  # GQA: k/v inputs are per key/value head
    assert cache["blocks.0.hook_q_input"].shape[2] == H and cache["blocks.0.hook_k_input"].shape[2] == G
    assert cache["blocks.1.attn.hook_result"].shape[2] == H and "blocks.1.hook_mlp_in" in cache
    double = model.to(torch.float64)
    try:
        f64 = {k: v.double() if v.is_floating_point() else v for k, v in inp.items()}
        with torch.no_grad():
            b64 = double(f64)
            with split_hooks(double):
                s64 = double(f64)
        assert (s64 - b64).abs().max() <= 1e-12
    finally:
        model.to(torch.float32)


def test_graph_edges_point_forward(qwen2_audio):
    g = Graph.from_model(qwen2_audio)
    L, H, G = 2, 4, 2
    assert g.senders[:2] == ["audio", "text"] and len(g.senders) == 2 + L * (H + 1)
    assert [r.name for r in g.receivers][:8] == ["a0.h0<q>", "a0.h1<q>", "a0.h2<q>", "a0.h3<q>", "a0.kv0<k>",
                                                 "a0.kv1<k>", "a0.kv0<v>", "a0.kv1<v>"]
    # every layer-l attention receiver sees inputs and layers < l; the MLP also its own layer's heads
    expect = 0
    for rec in g.receivers:
        expect += 2 + rec.layer * (H + 1) + (H if rec.kind == "mlp" else 0)
    assert g.n_edges == expect
    s, r = g.sender_index("a1.h0"), g.receiver_index("a1.h2<q>")
    assert not g.valid[s, r]
    with pytest.raises(KeyError, match="no sender 'a9.h0'"):
        g.sender_index("a9.h0")


@pytest.mark.parametrize("family", ["gqa", "padded"])
def test_exact_and_eap_equal_hand_computation(family, qwen2_audio, qwen2_audio_mha, gqa_item, padded_item):
    if family == "gqa":
        model, (inp, answer), corruption = qwen2_audio, gqa_item, Silence()
        corr = model.prepare_like(inp, torch.zeros(len(inp.waveform)).numpy())
        corr_inputs, corr_hooks = corr, []
        final = inp["input_ids"].shape[1] - 1
    else:
        model, (inp, answer), corruption = qwen2_audio_mha, padded_item, GaussianNoise(scale=3.0, n_samples=2, seed=3)
        run = corruption.apply(model, inp)
        corr_inputs, corr_hooks = run.batch(), run.hooks()
        final = int(inp["attention_mask"][0].nonzero().max())
    graph = Graph.from_model(model)
    edges = sample_edges(graph)
    names = [(graph.senders[s], graph.receivers[r].name) for s, r in edges]
    exact = exact_edge_patching(model, inp, corruption, answer=answer, edges=names)
    eap = edge_attribution(model, inp, corruption, answer=answer, method="eap")
    hand_exact, hand_eap = by_hand(model, inp, corr_inputs, corr_hooks, answer, edges, final)
    worst_exact = max(abs(float(exact.scores[e]) - v) for e, v in hand_exact.items())
    worst_eap = max(abs(float(eap.scores[e]) - v) for e, v in hand_eap.items())
    assert worst_exact <= 1e-5, worst_exact
    assert worst_eap <= 1e-5, worst_eap
    assert max(abs(v) for v in hand_exact.values()) > 1e-4  # the sampled edges matter
    assert (eap.scores[~graph.valid] == 0).all()


def test_ig_with_one_step_is_eap_and_more_steps_move(qwen2_audio, gqa_item):
    inp, answer = gqa_item
    eap = edge_attribution(qwen2_audio, inp, answer=answer, method="eap")
    by_pos = edge_attribution(qwen2_audio, inp, answer=answer, method="eap", by_position=True)
    assert by_pos.scores.shape == (*eap.scores.shape, len(by_pos.position_groups))
    assert torch.allclose(by_pos.scores.sum(-1), eap.scores, atol=1e-6)
    assert by_pos.scores[..., by_pos.position_groups.index("audio")].abs().sum() > 0
    for method in ("eap-ig-inputs", "eap-ig-activations"):
        one = edge_attribution(qwen2_audio, inp, answer=answer, method=method, steps=1)
        assert torch.allclose(one.scores, eap.scores, atol=1e-7)
        three = edge_attribution(qwen2_audio, inp, answer=answer, method=method, steps=3)
        assert (three.scores - eap.scores).abs().max() > 1e-6


def test_path_patching_is_one_edge(qwen2_audio, gqa_item):
    inp, answer = gqa_item
    exact = exact_edge_patching(qwen2_audio, inp, answer=answer, edges=[("a0.h1", "a1.kv1<k>"), ("m0", "logits")])
    g = exact.graph
    assert int((exact.scores != 0).sum()) == 2
    v = path_patching(qwen2_audio, inp, answer=answer, sender="a0.h1", receiver="a1.h3<k>")  # query head 3 -> kv head 1
    assert v == pytest.approx(float(exact.scores[g.sender_index("a0.h1"), g.receiver_index("a1.kv1<k>")]), abs=1e-6)
    with pytest.raises(ValueError, match="does not reach"):
        path_patching(qwen2_audio, inp, answer=answer, sender="a1.h0", receiver="a0.h1<q>")


def test_faithfulness_of_full_and_empty_graphs(qwen2_audio_mha, padded_item):
    inp, answer = padded_item
    corruption = GaussianNoise(scale=3.0, n_samples=2, seed=3)
    scores = edge_attribution(qwen2_audio_mha, inp, corruption, answer=answer, method="eap")
    g = scores.graph
    full = Circuit(g, g.valid.clone(), scores.edge_scores)
    empty = Circuit(g, torch.zeros_like(g.valid), scores.edge_scores)
    curve = faithfulness_curve(qwen2_audio_mha, scores, [full, empty], inp, corruption, answer=answer)
    assert curve.faithfulness[0] == pytest.approx(1.0, abs=1e-6)
    assert curve.faithfulness[1] == pytest.approx(0.0, abs=1e-6)
    assert curve.clean == pytest.approx(scores.clean, abs=1e-6)
    assert curve.corrupted == pytest.approx(scores.corrupted, abs=1e-6)


def test_circuit_selection_pruning_and_files(qwen2_audio, gqa_item, tmp_path):
    inp, answer = gqa_item
    scores = edge_attribution(qwen2_audio, inp, answer=answer, method="eap")
    top = Circuit.top_n(scores, 15, prune=False)
    assert top.n_edges == 15
    pruned = top.pruned()
    assert pruned.n_edges <= 15
    # every kept edge's receiver reaches the logits and its sender is reached from an input
    for s, r in pruned.edges():
        assert s in pruned.nodes()
    greedy = Circuit.greedy(scores, 10)
    assert greedy.n_edges == 10 and any(r == "logits" for _, r in greedy.edges())
    path = pruned.save(tmp_path / "circuit.json")
    back = Circuit.load(path)
    assert torch.equal(back.in_circuit, pruned.in_circuit)
    assert torch.allclose(back.scores, pruned.scores.double())
    saved = EdgeScores.load(scores.save(tmp_path / "scores.json"))
    assert torch.allclose(saved.scores, scores.scores.double()) and saved.method == "eap"
    assert spearman(saved, scores) == pytest.approx(1.0) and top_overlap(saved, scores) == 1.0
    assert len(scores.to_dataframe()) == scores.graph.n_edges
    assert "a0" in scores.summary() or "audio" in scores.summary()
    pruned.draw()
    with pytest.raises(ValueError, match="not a circuit file"):
        Circuit.load(tmp_path / "scores.json")


def test_bad_arguments_are_refused(qwen2_audio, gqa_item):
    inp, answer = gqa_item
    with pytest.raises(ValueError, match="method must be one of"):
        edge_attribution(qwen2_audio, inp, answer=answer, method="acdc")
    with pytest.raises(ValueError, match="steps must be an integer"):
        edge_attribution(qwen2_audio, inp, answer=answer, method="eap-ig-inputs", steps=0)
    with pytest.raises(TypeError, match="answer= is required"):
        edge_attribution(qwen2_audio, inp)
    with pytest.raises(ValueError, match="ablation must be one of"):
        scores = edge_attribution(qwen2_audio, inp, answer=answer, method="eap")
        evaluate_circuit(qwen2_audio, Circuit.top_n(scores, 5), inp, answer=answer, ablation="resample")


def test_cli_circuit_on_demo_letters(tmp_path, capsys):
    from lalm_lens.cli import main

    out = tmp_path / "circ"
    assert main(["circuit", "--out", str(out), "-n", "1", "--method", "eap", "--fraction", "0.05"]) == 0
    printed = capsys.readouterr().out
    for name in ("edge_scores.json", "circuit.json", "faithfulness.json", "faithfulness.png", "circuit.png",
                 "edge_scores.png", "summary.json", "edge_scores.html", "circuit.dot"):
        assert (out / name).is_file(), name
    scores = EdgeScores.load(out / "edge_scores.json")
    circuit = Circuit.load(out / "circuit.json")
    assert scores.n_items == 1 and scores.method == "eap"
    assert circuit.n_edges <= round(0.05 * scores.graph.n_edges)
    assert f"circuit: {circuit.n_edges} of {scores.graph.n_edges} edges" in printed
    assert "-0.00" not in printed
    assert main(["circuit", "--out", str(out), "--fraction", "0"]) == 2
    assert main(["circuit", "--out", str(out), "--batch-size", "0"]) == 2
    assert main(["circuit", "--model", "some/folder", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "--fraction must be in (0, 1]" in err and "--items is required" in err and "--batch-size" in err


def test_models_whose_residual_is_not_a_sum_are_refused(qwen2_audio, gqa_item):
    inp, answer = gqa_item
    block = qwen2_audio.blocks[0]
    with qwen2_audio.hooks(fwd_hooks=[("blocks.0.hook_mlp_out", lambda x, hook: 2.0 * x)]):
        # a hook is fine (the sender's output is what the hook returns) ...
        edge_attribution(qwen2_audio, inp, answer=answer, method="eap")
    original = type(block).forward

    def scaled(self, resid, *args, **kwargs):  # a block with a residual multiplier, as Granite's
        out = original(self, resid, *args, **kwargs)
        return resid + 0.5 * (out - resid)

    type(block).forward = scaled
    try:
        with pytest.raises(NotImplementedError, match="add its attention and MLP outputs"):
            edge_attribution(qwen2_audio, inp, answer=answer, method="eap")
    finally:
        type(block).forward = original


def test_every_estimate_is_exact_where_the_metric_is_linear_in_the_edge(qwen2_audio, gqa_item):
    """With `ln_final` replaced by the identity and the metric the answer's logit, the metric is linear in
    what reaches the logits: EAP, EAP-IG (any steps) and exact patching agree on every edge into `logits`."""
    inp, answer = gqa_item
    norm = qwen2_audio.ln_final
    qwen2_audio.ln_final = torch.nn.Identity()
    try:
        logit = lambda logits: logits[:, answer]  # noqa: E731
        kw = dict(answer=answer, metric=logit)
        graph = Graph.from_model(qwen2_audio)
        into_logits = [(s, "logits") for s in graph.senders]
        exact = edge_attribution(qwen2_audio, inp, method="exact", edges=into_logits, **kw)
        col = graph.receiver_index("logits")
        assert exact.scores[:, col].abs().max() > 1e-3
        for method, steps in (("eap", 1), ("eap-ig-inputs", 4), ("eap-ig-activations", 4)):
            est = edge_attribution(qwen2_audio, inp, method=method, steps=steps, **kw)
            assert torch.allclose(est.scores[:, col], exact.scores[:, col], atol=1e-4, rtol=1e-4), method
    finally:
        qwen2_audio.ln_final = norm
