"""What an engine is: a way to compute one item's clean, corrupted and patched scores.

An engine first runs the `baseline` (the clean and corrupted runs: their
final-position logits, for the checks and the metric), then the `patched` score
of every cell. `reference` runs one hooked forward per cell; `fast` re-runs
only what a patch can change; `attribution` is the gradient estimate. An
engine that cannot honour the model's current hooks says why (`unsupported`),
and the trace falls back to the reference engine.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Optional

import torch
from torch import Tensor

from lalm_lens.tracing.cells import Cell, state_hook
from lalm_lens.tracing.interventions import CorruptedRun


@dataclass
class TraceJob:
    """One item's trace, as an engine sees it (tensors on the model's device)."""

    clean: dict[str, Tensor]
    corrupted: CorruptedRun
    states: str
    cells: list[Cell]
    final: int  # the answer position
    answer: int  # token id
    score: Callable[[Tensor], Tensor]  # the bound metric: final-position logits [rows, d_vocab] -> [rows]
    lora: Optional[str] = None  # LoRA adapter: "on"/"off" in every run, "clean" in the clean run only; None: the model's rule

    def state_names(self, n_layers: int) -> list[str]:
        return [state_hook(self.states, layer) for layer in range(n_layers)]


@dataclass
class Baseline:
    clean_logits: Tensor  # [d_vocab] at the final position
    corrupted_logits: Tensor  # [n_runs, d_vocab]
    clean_score: float
    corrupted_score: float  # mean over the noise samples
    state: Any = None  # what the engine keeps for `patched`


def lora_for(model, job: TraceJob, run: str):
    """The adapter setting of one run ("clean", or "corrupted" for the corrupted and patched runs) of `job`."""
    if job.lora is None:
        return nullcontext()
    return model.using_lora("on" if job.lora == "on" or (job.lora == "clean" and run == "clean") else "off")


def score_of(job: TraceJob, logits: Tensor) -> float:
    """The job's metric of final-position logits `[rows, d_vocab]`, averaged over rows (noise samples)."""
    return job.score(logits).double().mean().item()


def restore_index(cell: Cell, positions_offset: int = 0):
    """`(positions, heads)` index tensors selecting a cell's restored entries of a `[batch, pos, ...]` state."""
    pos = torch.tensor(cell.positions) - positions_offset
    if cell.heads is None:
        return pos, None
    heads = torch.tensor(cell.heads)
    return pos[:, None].expand(-1, len(heads)).reshape(-1), heads.repeat(len(cell.positions))


class Engine(ABC):
    name = "engine"

    @abstractmethod
    def baseline(self, model, job: TraceJob) -> Baseline:
        """The clean and corrupted runs."""

    @abstractmethod
    def patched(self, model, job: TraceJob, base: Baseline) -> Tensor:
        """The metric of every cell's patched run (mean over noise samples), `[n_cells]` float64."""

    def patched_many(self, model, jobs: list[TraceJob], bases: list[Baseline]) -> list[Tensor]:
        """Several items' cells (the fast engine batches them together)."""
        return [self.patched(model, job, base) for job, base in zip(jobs, bases)]

    def unsupported(self, model, job: TraceJob) -> Optional[str]:
        """Why this engine cannot honour the model's current setup for `job` (None: it can)."""
        return None

    def to_dict(self) -> dict:
        return {"name": self.name}
