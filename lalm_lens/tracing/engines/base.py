"""What an engine is: a way to compute one item's clean, corrupted and patched scores.

An engine first runs the `baseline` (the clean and corrupted runs: their
final-position logits, for the checks and the metric), then the `patched` score
of every cell. `reference` runs one hooked forward per cell; `fast` re-runs
only what a patch can change; `attribution` is the gradient estimate. An
engine that cannot honour the model's current hooks says why (`unsupported`),
and the trace falls back to the reference engine. Every engine writes clean
states back through `restoring(model, name, fn)`, one hook for a block's duration.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator, Optional

import torch
from jaxtyping import Float, Int
from torch import Tensor

from lalm_lens.tracing.cells import Cell, State, state_of
from lalm_lens.tracing.interventions import CorruptedRun

if TYPE_CHECKING:
    from lalm_lens.interface import LALM

HookFn = Callable[[Tensor, object], Tensor]


@dataclass
class TraceJob:
    """One item's trace, as an engine sees it (tensors on the model's device)."""

    clean: dict[str, Tensor]  # the model's inputs, batch 1
    corrupted: CorruptedRun
    states: str
    cells: list[Cell]
    final: int  # the answer position
    answer: int  # token id
    score: Callable[[Tensor], Tensor]  # the bound metric: final-position logits [rows, d_vocab] -> [rows]
    lora: Optional[str] = None  # LoRA adapter: "on"/"off" in every run, "clean" in the clean run only; None: the model's rule

    @property
    def state(self) -> State:
        """The declared state the cells restore (its hook per layer, its unit axis)."""
        return state_of(self.states)

    def state_names(self, n_layers: int) -> list[str]:
        return self.state.hooks(n_layers)


@dataclass
class Baseline:
    """The clean and corrupted runs as every engine reports them (each engine's subclass adds what its
    `patched` needs)."""

    clean_logits: Float[Tensor, "d_vocab"]  # at the final position
    corrupted_logits: Float[Tensor, "n_runs d_vocab"]
    clean_score: float
    corrupted_score: float  # mean over the noise samples


@contextmanager
def restoring(model: "LALM", name: str, fn: Optional[HookFn]) -> Iterator[None]:
    """`fn` on hook point `name` for the block's duration (baukit's `Trace(edit_output=...)`; None: no hook).
    Like `model.hooks`, it holds the model's next context level, and removes only its own hook: the
    user's hooks stay as they were."""
    if fn is None:
        yield
        return
    hook_point = model.hook_dict[name]
    model.context_level += 1
    level = model.context_level
    try:
        hook_point.add_hook(fn, level=level)
        yield
    finally:
        hook_point.remove_hooks("fwd", level=level)
        model.context_level -= 1


def lora_for(model: "LALM", job: TraceJob, run: str):
    """The adapter setting of one run ("clean", or "corrupted" for the corrupted and patched runs) of `job`."""
    if job.lora is None:
        return nullcontext()
    return model.using_lora("on" if job.lora == "on" or (job.lora == "clean" and run == "clean") else "off")


def score_of(job: TraceJob, logits: Float[Tensor, "rows d_vocab"]) -> float:
    """The job's metric of final-position logits `[rows, d_vocab]`, averaged over rows (noise samples)."""
    return job.score(logits).double().mean().item()


def restore_index(cell: Cell, positions_offset: int = 0) -> tuple[Int[Tensor, "n"], Optional[Int[Tensor, "n"]]]:
    """`(positions, units)` index tensors selecting a cell's restored entries of a `[batch, pos, ...]` state
    (units: the axis after position, `State.units`)."""
    pos = torch.tensor(cell.positions) - positions_offset
    if cell.heads is None:
        return pos, None
    heads = torch.tensor(cell.heads)
    return pos[:, None].expand(-1, len(heads)).reshape(-1), heads.repeat(len(cell.positions))


class Engine(ABC):
    name = "engine"

    @abstractmethod
    def baseline(self, model: "LALM", job: TraceJob) -> Baseline:
        """The clean and corrupted runs."""

    @abstractmethod
    def patched(self, model: "LALM", job: TraceJob, base: Baseline) -> Float[Tensor, "n_cells"]:
        """The metric of every cell's patched run (mean over noise samples), `[n_cells]` float64."""

    def patched_many(self, model: "LALM", jobs: list[TraceJob], bases: list[Baseline]) -> list[Tensor]:
        """Several items' cells (the fast engine batches them together)."""
        return [self.patched(model, job, base) for job, base in zip(jobs, bases)]

    def unsupported(self, model: "LALM", job: TraceJob) -> Optional[str]:
        """Why this engine cannot honour the model's current setup for `job` (None: it can)."""
        return None

    def to_dict(self) -> dict:
        return {"name": self.name}
