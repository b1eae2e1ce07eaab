"""The computational graph of an LM backbone, as edge attribution sees it.

Senders write into the residual stream: the input (split by modality: `audio`
positions, optionally cut into time windows, and `text`), every attention head
`a{l}.h{h}` (its `hook_result`) and every MLP `m{l}` (`hook_mlp_out`). Receivers
read from it: each head's query input `a{l}.h{h}<q>`, each key/value head's key
and value inputs `a{l}.kv{g}<k>` / `<v>` (under GQA one k/v input serves a group
of query heads, as `hook_k_input` is per key/value head), each MLP's input
`m{l}` (`hook_mlp_in`), and `logits` (the residual entering `ln_final`). An edge
joins a sender to every receiver after it: the residual a receiver reads is the
sum of its senders' outputs (plus biases that no corruption changes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Sequence

import torch
from torch import Tensor


@dataclass(frozen=True)
class Receiver:
    name: str  # e.g. "a3.h1<q>", "a3.kv0<k>", "m3", "logits"
    node: str  # the node it belongs to ("a3.h1", "a3.kv0", "m3", "logits")
    layer: int  # n_layers for the logits
    kind: str  # "q" | "k" | "v" | "mlp" | "logits"
    head: Optional[int] = None  # query head (q) or key/value head (k, v)


@dataclass
class Graph:
    """Nodes and edges of a model's LM; `valid[s, r]` says whether sender s reaches receiver r."""

    n_layers: int
    n_heads: int
    n_kv_heads: int
    inputs: list[str]  # input node names, e.g. ["audio", "text"] or ["audio 0.0-0.5 s", ..., "text"]
    input_spans: list[Optional[tuple[float, float]]] = field(default_factory=list)  # seconds, for audio windows
    senders: list[str] = field(init=False)
    sender_layer: list[int] = field(init=False)  # -1 for inputs
    receivers: list[Receiver] = field(init=False)
    valid: Tensor = field(init=False)  # [n_senders, n_receivers] bool

    def __post_init__(self) -> None:
        L, H, G = self.n_layers, self.n_heads, self.n_kv_heads
        self.senders = list(self.inputs)
        self.sender_layer = [-1] * len(self.inputs)
        for layer in range(L):
            self.senders += [f"a{layer}.h{h}" for h in range(H)] + [f"m{layer}"]
            self.sender_layer += [layer] * (H + 1)
        receivers: list[Receiver] = []
        for layer in range(L):
            receivers += [Receiver(f"a{layer}.h{h}<q>", f"a{layer}.h{h}", layer, "q", h) for h in range(H)]
            for kind in ("k", "v"):
                receivers += [Receiver(f"a{layer}.{self.kv_node(layer, g)}<{kind}>", f"a{layer}.{self.kv_node(layer, g)}",
                                       layer, kind, g) for g in range(G)]
            receivers.append(Receiver(f"m{layer}", f"m{layer}", layer, "mlp"))
        receivers.append(Receiver("logits", "logits", L, "logits"))
        self.receivers = receivers
        valid = torch.zeros(len(self.senders), len(receivers), dtype=torch.bool)
        for r, rec in enumerate(receivers):
            for s, (name, layer) in enumerate(zip(self.senders, self.sender_layer)):
                before = layer < rec.layer or (rec.kind == "mlp" and layer == rec.layer and name.startswith("a"))
                valid[s, r] = before
        self.valid = valid

    def kv_node(self, layer: int, group: int) -> str:
        """A key/value head's node name: `h{g}` with multi-head attention, `kv{g}` under GQA."""
        return f"h{group}" if self.n_kv_heads == self.n_heads else f"kv{group}"

    @classmethod
    def from_model(cls, model, audio_windows: Optional[Sequence[tuple[float, float]]] = None) -> "Graph":
        """The graph of `model`'s LM; `audio_windows` (seconds) split the audio input node by time."""
        cfg = model.cfg
        if audio_windows:
            spans = [(float(a), float(b)) for a, b in audio_windows]
            inputs = [f"audio {a:g}-{b:g} s" for a, b in spans] + ["text"]
            return cls(cfg.n_layers, cfg.n_heads, cfg.n_key_value_heads, inputs, [*spans, None])
        return cls(cfg.n_layers, cfg.n_heads, cfg.n_key_value_heads, ["audio", "text"], [None, None])

    # ------------------------------------------------------------------ lookups
    @property
    def n_edges(self) -> int:
        return int(self.valid.sum())

    def sender_index(self, name: str) -> int:
        try:
            return self.senders.index(name)
        except ValueError:
            raise KeyError(f"no sender {name!r}; senders are the inputs {self.inputs}, heads 'a{{l}}.h{{h}}' "
                           f"and MLPs 'm{{l}}'") from None

    def receiver_index(self, name: str) -> int:
        for i, rec in enumerate(self.receivers):
            if rec.name == name:
                return i
        raise KeyError(f"no receiver {name!r}; receivers are 'a{{l}}.h{{h}}<q>', 'a{{l}}.{self.kv_node(0, 0)}<k>'/'<v>', "
                       "'m{l}' and 'logits'")

    def edge_names(self) -> list[tuple[str, str]]:
        """`(sender, receiver)` of every valid edge, in `valid.nonzero()` order."""
        return [(self.senders[s], self.receivers[r].name) for s, r in self.valid.nonzero().tolist()]

    def row(self, node: str) -> float:
        """The node's height in a drawing: inputs -1, layer l's heads l, its MLP l + 0.5, the logits on top."""
        if node in self.inputs:
            return -1
        if node == "logits":
            return self.n_layers
        layer = int(node[1:].split(".")[0])
        return layer + (0.5 if node.startswith("m") else 0.0)

    def receivers_in_layer(self, layer: int) -> list[int]:
        return [i for i, rec in enumerate(self.receivers) if rec.layer == layer]

    def input_masks(self, groups: Sequence[str], token_seconds: Optional[Sequence[float]] = None) -> Tensor:
        """`[n_inputs, pos]` 0/1 masks saying which positions each input node covers."""
        n = len(groups)
        masks = torch.zeros(len(self.inputs), n)
        audio = [i for i, g in enumerate(groups) if g == "audio"]
        text = [i for i, g in enumerate(groups) if g != "audio"]
        masks[-1, text] = 1.0
        if self.input_spans[0] is None:
            masks[0, audio] = 1.0
            return masks
        if token_seconds is None or len(token_seconds) != len(audio):
            raise ValueError("audio windows need the item's audio token times (prepare the item with model.prepare)")
        for k, (a, b) in enumerate(self.input_spans[:-1]):
            last = k == len(self.input_spans) - 2
            for pos, t in zip(audio, token_seconds):
                if a <= t < b or (last and t >= b):
                    masks[k, pos] = 1.0
        return masks

    def to_dict(self) -> dict:
        return dict(n_layers=self.n_layers, n_heads=self.n_heads, n_kv_heads=self.n_kv_heads, inputs=self.inputs,
                    input_spans=[list(s) if s else None for s in self.input_spans])

    @classmethod
    def from_dict(cls, d: dict) -> "Graph":
        spans = [tuple(s) if s else None for s in d.get("input_spans") or [None] * len(d["inputs"])]
        return cls(d["n_layers"], d["n_heads"], d["n_kv_heads"], list(d["inputs"]), spans)
