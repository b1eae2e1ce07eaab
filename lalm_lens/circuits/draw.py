"""Drawing a circuit: graphviz's `dot` where it is installed, networkx + matplotlib otherwise.

Both draw the same layered picture: the input nodes at the bottom (audio blue, text
green), heads (purple) and MLPs (orange) by layer, the logits (red) on top; an edge's
width is its |score|, its colour the sign (red: corrupting it raises the metric, blue: lowers it).
"""

from __future__ import annotations

import shutil
import subprocess
from typing import Optional

COLOURS = dict(audio="#1f77b4", text="#2ca02c", logits="#d62728", mlp="#ff7f0e", head="#9467bd")
BACKENDS = ("auto", "graphviz", "networkx")


def node_colour(name: str) -> str:
    if name.startswith("audio"):
        return COLOURS["audio"]
    if name == "text":
        return COLOURS["text"]
    if name == "logits":
        return COLOURS["logits"]
    return COLOURS["mlp"] if name.startswith("m") else COLOURS["head"]


def drawing_backend(backend: str = "auto") -> str:
    """"graphviz" when asked for or (`auto`) when `dot` is on PATH; else "networkx" (matplotlib)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    dot = shutil.which("dot")
    if backend == "graphviz" and dot is None:
        raise RuntimeError("graphviz's `dot` is not on PATH (install graphviz, or draw with backend='networkx')")
    if backend == "auto":
        return "graphviz" if dot is not None else "networkx"
    return backend


def edge_list(circuit) -> list[tuple[str, str, float]]:
    """`(sender node, receiver node, score)` of every edge in the circuit (q/k/v inputs of a head merged)."""
    g = circuit.graph
    out: dict[tuple[str, str], float] = {}
    for s, r in circuit.in_circuit.nonzero().tolist():
        score = 0.0 if circuit.scores is None else float(circuit.scores[s, r])
        key = (g.senders[s], g.receivers[r].node)
        out[key] = out.get(key, 0.0) + score
    return [(s, r, v) for (s, r), v in out.items()]


def to_dot(circuit, title: Optional[str] = None) -> str:
    """The circuit as graphviz DOT text (inputs at the bottom, one rank per layer)."""
    g = circuit.graph
    edges = edge_list(circuit)
    top = max([abs(v) for _, _, v in edges] or [1.0]) or 1.0
    nodes = circuit.nodes()
    lines = ["digraph circuit {", "  rankdir=BT;", '  node [style=filled, fontcolor=white, fontsize=10, shape=ellipse];']
    if title:
        lines.append(f'  labelloc=t; label="{title}";')
    ranks: dict[float, list[str]] = {}
    for n in nodes:
        ranks.setdefault(g.row(n), []).append(n)
        shape = "box" if n in g.inputs or n == "logits" else "ellipse"
        lines.append(f'  "{n}" [fillcolor="{node_colour(n)}", shape={shape}];')
    for _, names in sorted(ranks.items()):
        lines.append("  { rank=same; " + " ".join(f'"{n}";' for n in sorted(names)) + " }")
    for s, r, v in edges:
        colour = "#b2182b" if v > 0 else "#2166ac"
        lines.append(f'  "{s}" -> "{r}" [color="{colour}", penwidth={0.5 + 3 * abs(v) / top:.2f}];')
    lines.append("}")
    return "\n".join(lines)


def render_dot(source: str, fmt: str = "png") -> bytes:
    """`dot -T{fmt}` of DOT text."""
    done = subprocess.run(["dot", f"-T{fmt}"], input=source.encode(), capture_output=True, timeout=120)
    if done.returncode:
        raise RuntimeError(f"dot failed: {done.stderr.decode(errors='replace')[:500]}")
    return done.stdout


def draw_graphviz(circuit, ax=None, title: Optional[str] = None):
    """Rendered by `dot`, shown on a matplotlib axis (so callers save it as any figure)."""
    import io

    import matplotlib.image as mpimg
    import matplotlib.pyplot as plt

    image = mpimg.imread(io.BytesIO(render_dot(to_dot(circuit, title))), format="png")
    if ax is None:
        h, w = image.shape[:2]
        _, ax = plt.subplots(figsize=(min(20, max(4, w / 100)), min(20, max(3, h / 100))))
    ax.imshow(image)
    ax.axis("off")
    return ax


def draw_networkx(circuit, ax=None, title: Optional[str] = None):
    """The layered picture with networkx and matplotlib."""
    import matplotlib.pyplot as plt
    import networkx as nx

    g = circuit.graph
    G = nx.DiGraph()
    for n in circuit.nodes():
        G.add_node(n)
    for s, r, v in edge_list(circuit):
        G.add_edge(s, r, weight=v)
    per_row: dict[float, list[str]] = {}
    for n in G.nodes:
        per_row.setdefault(g.row(n), []).append(n)
    pos = {n: (i - (len(names) - 1) / 2, row) for row, names in per_row.items() for i, n in enumerate(sorted(names))}
    if ax is None:
        _, ax = plt.subplots(figsize=(10, 8))
    weights = [abs(G.edges[e]["weight"]) for e in G.edges] or [1.0]
    top = max(weights) or 1.0
    nx.draw_networkx_nodes(G, pos, ax=ax, node_color=[node_colour(n) for n in G.nodes], node_size=500)
    nx.draw_networkx_labels(G, pos, ax=ax, font_size=7)
    nx.draw_networkx_edges(G, pos, ax=ax, width=[0.5 + 3 * w / top for w in weights], arrows=True,
                           edge_color=["#b2182b" if G.edges[e]["weight"] > 0 else "#2166ac" for e in G.edges])
    ax.set_title(title or f"circuit: {circuit.n_edges} edges (inputs: audio blue, text green; edges: blue = "
                 "corrupting it lowers the metric, red = raises it)", fontsize=9)
    ax.axis("off")
    return ax
