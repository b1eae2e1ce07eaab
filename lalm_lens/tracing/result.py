"""`TraceResult`: what `causal_trace` returns — numbers, labels, settings; save/load/plot."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
from torch import Tensor


@dataclass
class TraceResult:
    """One item's causal trace.

    `p_patched` / `recovery` are `[n_layers]` in layers mode and
    `[n_layers, n_positions]` in tokens mode; `recovery` is
    (P_patched − P_corrupted) / (P_clean − P_corrupted).
    """

    p_clean: float
    p_corrupted: float
    p_patched: Tensor
    recovery: Tensor
    layers: list[int]
    positions: list[int]
    token_labels: list[str]  # the tokens at `positions`
    groups: dict[int, str]  # every position -> group name
    mode: str
    states: str
    answer: str
    answer_token: int
    settings: dict[str, Any] = field(default_factory=dict)
    str_tokens: list[str] = field(default_factory=list)  # the whole input
    special_positions: list[int] = field(default_factory=list)

    def group_of(self, position: int) -> str:
        return self.groups[position]

    def group_recovery(self) -> dict[str, Tensor]:
        """Tokens mode: mean recovery over each group's traced positions, `[n_layers]` per group."""
        if self.mode != "tokens":
            raise ValueError("group_recovery needs a tokens-mode trace")
        out = {}
        for name in dict.fromkeys(self.groups[p] for p in self.positions):
            cols = [j for j, p in enumerate(self.positions) if self.groups[p] == name]
            out[name] = self.recovery[:, cols].mean(1)
        return out

    # ------------------------------------------------------------ persistence
    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["p_patched"] = self.p_patched.tolist()
        d["recovery"] = self.recovery.tolist()
        d["groups"] = {str(k): v for k, v in self.groups.items()}
        return d

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "TraceResult":
        d = dict(d)
        d["p_patched"] = torch.tensor(d["p_patched"], dtype=torch.float64)
        d["recovery"] = torch.tensor(d["recovery"], dtype=torch.float64)
        d["groups"] = {int(k): v for k, v in d["groups"].items()}
        return cls(**d)

    def save(self, path: str | Path) -> Path:
        """JSON (`.json`) or numpy archive (`.npz`, arrays plus the JSON metadata)."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.suffix == ".npz":
            meta = self.to_json()
            arrays = {"p_patched": np.asarray(meta.pop("p_patched")), "recovery": np.asarray(meta.pop("recovery"))}
            np.savez(path, meta=json.dumps(meta), **arrays)
        else:
            path.write_text(json.dumps(self.to_json(), indent=1))
        return path

    @classmethod
    def load(cls, path: str | Path) -> "TraceResult":
        path = Path(path)
        if path.suffix == ".npz":
            data = np.load(path)
            meta = json.loads(str(data["meta"]))
            meta["p_patched"], meta["recovery"] = data["p_patched"].tolist(), data["recovery"].tolist()
            return cls.from_json(meta)
        return cls.from_json(json.loads(path.read_text()))

    def to_dataframe(self):
        """Long format: one row per (layer[, position]) cell."""
        import pandas as pd

        rows = []
        for a, layer in enumerate(self.layers):
            if self.mode == "layers":
                rows.append(dict(layer=layer, p_patched=float(self.p_patched[a]), recovery=float(self.recovery[a])))
                continue
            for b, pos in enumerate(self.positions):
                rows.append(dict(layer=layer, position=pos, token=self.token_labels[b], group=self.groups[pos],
                                 p_patched=float(self.p_patched[a, b]), recovery=float(self.recovery[a, b])))
        return pd.DataFrame(rows)

    def plot(self, ax=None, value: str = "recovery", title: Optional[str] = None):
        """Heatmap (tokens mode) or curve (layers mode); returns the matplotlib Axes."""
        from lalm_lens.tracing import plots

        if self.mode == "tokens":
            return plots.plot_heatmap(self, ax=ax, value=value, title=title)
        return plots.plot_layers({self.states: self}, ax=ax, value=value, title=title)

    def summary(self) -> str:
        """A short paragraph: probabilities and where recovery is highest."""
        lines = [
            f"answer {self.answer!r} (token {self.answer_token}): P(clean) = {self.p_clean:.4f}, "
            f"P(corrupted) = {self.p_corrupted:.4f} [{self.settings.get('corruption', '')}]"
        ]
        rec = self.recovery.float()
        if self.mode == "layers":
            best = int(rec.nan_to_num(-1e9).argmax())
            first = next((lay for lay, r in zip(self.layers, rec.tolist()) if r >= 0.5), None)
            lines.append(f"restoring {self.states} of {len(self.positions)} positions: max recovery "
                         f"{rec[best]:.2f} at layer {self.layers[best]}; first layer with RR >= 0.5: {first}")
        else:
            flat = int(rec.nan_to_num(-1e9).argmax())
            a, b = divmod(flat, rec.shape[1])
            pos = self.positions[b]
            lines.append(f"best single cell: layer {self.layers[a]}, position {pos} {self.token_labels[b]!r} "
                         f"({self.groups[pos]}), RR {rec[a, b]:.2f}")
            per_group = {g: float(v.max()) for g, v in self.group_recovery().items()}
            lines.append("max RR per group: " + ", ".join(f"{g} {v:.2f}" for g, v in per_group.items()))
        return "\n".join(lines)
