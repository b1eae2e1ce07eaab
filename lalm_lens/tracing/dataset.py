"""`trace_dataset`: causal traces over many items, with the same checks as `causal_trace` and 95% CIs.

Items: a JSONL file (one object per line) or a list of `Item`s or dicts —
`{"id": "...", "audio": "clips/a.wav", "question": "...", "options": ["male", "female"],
  "answer": "male", "answer_prefix": "The speaker's gender is"}` — `audio` relative
to the file's folder; `id`, `options` and `answer_prefix` optional; other keys
are kept with the record. An item without an id gets one from its audio path
and question (stable when lines are inserted); duplicate ids are refused.

Results are appended to `out` as they come, behind a header that holds the
settings (`records.py`): a rerun with the same settings resumes (failed items
are retried, and items whose content — audio bytes, question, options, answer,
answer prefix — changed since their record was written are traced again, with a
warning naming them), one with other settings is refused, and a second run on
the same file waits for no one — it is refused by the lock. The file ends with
one record per id. Items that fail a check
(clean top-1 not the answer, corrupted top-1 still the answer, too small an
effect) are dropped and counted, as the paper does (`filter=None` keeps them,
flagged). The settings are checked once, before the first item.
"""

from __future__ import annotations

import hashlib
import json
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Iterable, Optional, Union

from jaxtyping import Float
from torch import Tensor

from lalm_lens.tracing.content import item_fingerprint
from lalm_lens.tracing.records import RecordsWriter, merge, rank_file, rank_files, read_all, superseded
from lalm_lens.tracing.dataset_result import DatasetResult, bootstrap_ci  # noqa: F401  (re-exported)
from lalm_lens.tracing.results import TokenTrace
from lalm_lens.tracing.pipeline import PreparedTrace, TraceSpec, finish, prepare

if TYPE_CHECKING:
    from lalm_lens.interface import LALM
    from lalm_lens.tracing import distributed

ITEM_FIELDS = ("id", "audio", "question", "answer", "options", "answer_prefix")
DROPPED = {"clean_top1": "dropped_clean_wrong", "corrupted_top1": "dropped_corrupted_right", "effect": "dropped_small_effect"}


@dataclass
class Item:
    id: str
    audio: str
    question: str
    answer: Union[str, int]
    options: Optional[list[str]] = None
    answer_prefix: Optional[str] = None
    meta: dict = field(default_factory=dict)  # other fields of the item (kept in the records)

    def fingerprint(self) -> str:
        """The hash of this item's content (`content.item_fingerprint`)."""
        return item_fingerprint(self.audio, self.question, self.options, self.answer, self.answer_prefix)


def stable_id(audio: str, question: str) -> str:
    """An id from the audio path and the question: unchanged when other items are added."""
    digest = hashlib.sha1(f"{audio}\n{question}".encode()).hexdigest()[:10]
    return f"{Path(str(audio)).stem}-{digest}"


def item_from_dict(d: dict, folder: Optional[Path] = None, where: str = "item") -> Item:
    if not isinstance(d, dict):
        raise ValueError(f"{where}: an item must be a JSON object, got {type(d).__name__}")
    missing = [k for k in ("audio", "question", "answer") if k not in d]
    if missing:
        raise ValueError(f"{where}: missing field(s) {missing}")
    audio = d["audio"]
    if folder is not None and isinstance(audio, str) and not Path(audio).is_absolute():
        audio = str(folder / audio)
    extra = {k: v for k, v in d.items() if k not in ITEM_FIELDS}
    return Item(id=str(d["id"]) if d.get("id") is not None else stable_id(d["audio"], d["question"]), audio=audio,
                question=d["question"], answer=d["answer"], options=d.get("options"),
                answer_prefix=d.get("answer_prefix"), meta=extra)


def read_items(path: Union[str, Path]) -> list[Item]:
    """Items from a JSONL file; a malformed line is reported (file and line) and skipped."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"items file not found: {path}")
    items = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            items.append(item_from_dict(json.loads(line), path.parent, f"{path.name} line {n}"))
        except ValueError as err:
            warnings.warn(f"{path.name} line {n} skipped: {err}")
    return items


def as_items(items) -> list[Item]:
    """A list of `Item`s from a path, `Item`s or dicts; duplicate ids refused."""
    if isinstance(items, (str, Path)):
        items = read_items(items)
    items = [i if isinstance(i, Item) else item_from_dict(i, where=f"item {n}") for n, i in enumerate(items)]
    seen: dict[str, int] = {}
    for item in items:
        seen[item.id] = seen.get(item.id, 0) + 1
    dup = [i for i, n in seen.items() if n > 1]
    if dup:
        raise ValueError(f"duplicate item id(s) {dup[:5]}{' ...' if len(dup) > 5 else ''}: ids must be unique "
                         "(records are matched by id when a run resumes)")
    return items


def item_record(item: Item) -> dict[str, Any]:
    record = dict(id=item.id, audio=str(item.audio), question=item.question, options=item.options,
                  answer=item.answer, answer_prefix=item.answer_prefix, fingerprint=item.fingerprint())
    return {**record, **{k: v for k, v in item.meta.items() if k not in record}}


@dataclass
class ItemRun:
    """One item of a run: its record, and its prepared trace once its baseline ran (None when it failed, or
    was dropped by a check: then the record says so and no cell runs)."""

    item: Item
    record: dict
    prepared: Optional[PreparedTrace] = None


def start_item(model: "LALM", spec: TraceSpec, item: Item, filter: Optional[str]) -> ItemRun:
    """Prepare one item (`trace.prepare`: baseline and checks, once); the record says whether its cells run."""
    run = ItemRun(item, item_record(item))
    record = run.record
    try:
        inp = model.prepare(item.audio, item.question, answer_prefix=item.answer_prefix, options=item.options)
        prep = prepare(model, spec, inp, item.answer)
    except Exception as err:  # recorded, and the run goes on
        record.update(status="error", error=f"{type(err).__name__}: {err}")
        return run
    base, checks = prep.baseline, prep.checks
    audio = inp.audio_positions[0].tolist()
    if audio:
        record["audio_span"] = [audio[0], audio[-1]]
    record.update(n_tokens=prep.n_tokens, work=prep.work, answer_token=prep.job.answer, clean=base.clean_score,
                  corrupted=base.corrupted_score,
                  clean_top=int(base.clean_logits.argmax()),
                  corrupted_top=int(base.corrupted_logits.float().softmax(-1).mean(0).argmax()),
                  checks=checks.to_json())
    if filter and not checks.ok:
        record["status"] = DROPPED[checks.failed[0].name]
        return run
    run.prepared = prep
    return run


def finish_item(model: "LALM", run: ItemRun, patched: Float[Tensor, "n_cells"]) -> dict:
    """The record of an item whose cells ran (`trace.finish`)."""
    result = finish(model, run.prepared, patched)
    run.record.update(status="ok", ill_posed=result.ill_posed, patched=result.patched.tolist(),
                      recovery=result.recovery.tolist(), positions=result.positions,
                      groups=[result.groups[q] for q in result.positions])
    if isinstance(result, TokenTrace):
        run.record["group_recovery"] = {g: v.tolist() for g, v in result.group_recovery().items()}
        run.record["token_labels"] = result.token_labels
    return run.record


def trace_items(model: "LALM", spec: TraceSpec, items: list[Item], filter: Optional[str]) -> list[dict]:
    """Records of several items; the cells of the well-posed ones run together (`Engine.patched_many`)."""
    runs = [start_item(model, spec, item, filter) for item in items]
    ready = [r for r in runs if r.prepared is not None]
    engines = {id(r.prepared.engine): r.prepared.engine for r in ready}  # normally one; the reference where hooks forced it
    for engine in engines.values():
        mine = [r for r in ready if r.prepared.engine is engine]
        try:
            values = engine.patched_many(model, [r.prepared.job for r in mine], [r.prepared.baseline for r in mine])
        except Exception as err:
            for r in mine:
                r.record.update(status="error", error=f"{type(err).__name__}: {err}")
            continue
        for r, patched in zip(mine, values):
            finish_item(model, r, patched)
    return [r.record for r in runs]


def items_per_call(spec: TraceSpec, batch_items, work: Optional[int] = None) -> Optional[int]:
    """`batch_items`; with "auto", as many items as fill the fast engine's `max_batch_tokens` given one
    item's suffix `work` (rows x positions; None until the first item has run)."""
    if batch_items == "auto":
        budget = getattr(spec.engine, "max_batch_tokens", None)
        if budget is None:
            return 1
        return None if work is None else max(1, min(64, budget // max(work, 1)))
    if isinstance(batch_items, bool) or not isinstance(batch_items, int) or batch_items < 1:
        raise ValueError(f"batch_items must be an integer >= 1 or 'auto', got {batch_items!r}")
    return batch_items


def check_limit(limit) -> Optional[int]:
    """`limit`: None (every item) or a whole number of items >= 1."""
    if limit is None:
        return None
    if isinstance(limit, bool) or not hasattr(limit, "__index__") or int(limit.__index__()) < 1:
        raise ValueError(f"limit must be a whole number of items >= 1 (or None for every item), got {limit!r}")
    return int(limit.__index__())


def what_changed(item: Item, record: dict) -> str:
    """Which of an item's fields differ from the record it was traced into (the audio when none does)."""
    if "fingerprint" not in record:
        return "its record has no content fingerprint (an older lalm-lens wrote it)"
    fields = [f"{k} {record.get(k)!r} -> {getattr(item, k)!r}" for k in ("question", "options", "answer", "answer_prefix")
              if record.get(k) != getattr(item, k)]
    return ", ".join(fields) or "its audio's content"


def stale_records(items: list[Item], done: dict[str, dict], source) -> set[str]:
    """Ids of the items whose content differs from their record's (warned about, by id and field)."""
    changed = {i.id: what_changed(i, done[i.id]) for i in items  # (failed items are retried anyway)
               if i.id in done and done[i.id]["status"] != "error" and done[i.id].get("fingerprint") != i.fingerprint()}
    if changed:
        shown = "; ".join(f"{k!r} ({v})" for k, v in list(changed.items())[:5])
        warnings.warn(f"{len(changed)} item(s) changed since their records in {source} were written; their old "
                      f"records are replaced and they are traced again: {shown}"
                      f"{' ...' if len(changed) > 5 else ''}", stacklevel=3)
    return set(changed)


def dataset_settings(model: "LALM", spec: TraceSpec, filter: Optional[str]) -> dict:
    """The settings a records file is written under (a resume with others is refused)."""
    return dict(spec.settings(), model=model.name_or_path, dtype=str(model.cfg.dtype),
                filter=None if filter is None else "checks")


def resume(out: Optional[Path], settings: dict, dist: "distributed.Dist", items: list[Item],
           overwrite: bool) -> tuple[dict[str, dict], list[Item]]:
    """The records already written under `out` (by id), and this rank's items still to trace: new ones,
    failed ones (retried) and changed ones (warned about, traced again)."""
    if out is not None and overwrite and dist.main:
        for path in [out] + rank_files(out):
            path.unlink(missing_ok=True)
    dist.barrier()
    done = read_all(out, settings) if out is not None else {}
    dist.barrier()  # everyone has read what was done before anyone writes
    mine = dist.share(items)
    changed = stale_records(mine, done, out)
    return done, [i for i in mine if i.id not in done or done[i.id]["status"] == "error" or i.id in changed]


class Progress:
    """The progress of this rank's items: a bar of its own, or a caller's (a study's) advanced here."""

    def __init__(self, progress, dist: "distributed.Dist", todo: int, resumed: Optional[int]):
        from tqdm.auto import tqdm

        self.outer = hasattr(progress, "update")
        self.bar = progress if self.outer else tqdm(total=todo, desc=f"tracing (rank {dist.rank})" if dist.active
                                                    else "tracing", disable=not progress or not dist.main)
        if self.outer and resumed is not None:
            self.bar.update(resumed)  # resumed items count as done

    def update(self, n: int) -> None:
        self.bar.update(n)

    def close(self) -> None:
        if not self.outer:
            self.bar.close()


def run_batched(model: "LALM", spec: TraceSpec, todo: list[Item], filter: Optional[str], batch_items,
                write: Callable[[dict], None], bar: Progress) -> None:
    """Trace `todo` in chunks of `batch_items` items, writing each record as it comes."""
    k, start = items_per_call(spec, batch_items), 0
    while start < len(todo):
        chunk = todo[start : start + (k or 1)]
        for record in trace_items(model, spec, chunk, filter):
            write(record)
            if k is None and record.get("work"):  # "auto": sized from the first item that ran
                k = items_per_call(spec, batch_items, record["work"])
        start += len(chunk)
        bar.update(len(chunk))
    bar.close()


def write_records(out: Path, settings: dict, dist: "distributed.Dist", run: Callable[[Callable[[dict], None]], None]
                  ) -> dict[str, dict]:
    """`run(write)` into this rank's records file, then (rank 0) the merge into `out`; every record by id."""
    target = rank_file(out, dist.rank) if dist.active else out
    with RecordsWriter(target, settings, overwrite=False) as writer:
        run(writer.write)
    dist.barrier()
    if dist.main and (dist.active or rank_files(out) or superseded(out)):
        merge(out, settings)  # one record per id: retried and redone items' old lines go
    dist.barrier()
    return read_all(out, settings)


def trace_dataset(
    model: "LALM",
    items: Union[str, Path, Iterable[Item], Iterable[dict]],
    *,
    out: Union[str, Path, None] = None,
    mode: str = "layers",
    corruption="silence",
    metric=None,
    states: str = "resid_post",
    layers=None,
    positions=None,
    window: int = 1,
    engine="fast",
    min_effect: Optional[float] = None,
    filter: Optional[str] = "checks",
    batch_items: Union[int, str] = 1,
    overwrite: bool = False,
    progress: bool = True,
    limit: Optional[int] = None,
) -> DatasetResult:
    """Trace every item (`filter="checks"` drops ill-posed items as the paper does; None keeps all).

    `batch_items`: items whose cells run in one engine call ("auto": as many as fill the
    fast engine's `max_batch_tokens`). Under `torchrun` each rank traces every N-th item
    into its own records file and rank 0 merges them into `out` at the end.
    """
    from lalm_lens.tracing import distributed

    if filter not in (None, "checks", "top1"):
        raise ValueError(f"filter must be 'checks' (drop ill-posed items) or None, got {filter!r}")
    spec = TraceSpec(model, mode=mode, states=states, layers=layers, positions=positions, window=window,
                     corruption=corruption, metric=metric, engine=engine, min_effect=min_effect)
    items_per_call(spec, batch_items)  # checks the argument
    items = as_items(items)[: check_limit(limit)]
    settings = dataset_settings(model, spec, filter)
    dist = distributed.setup(model.device)
    out = None if out is None else Path(out)
    done, todo = resume(out, settings, dist, items, overwrite)
    records: dict[str, dict] = dict(done)

    def run(write: Callable[[dict], None]) -> None:
        def keep(record: dict) -> None:
            records[record["id"]] = record
            write(record)

        resumed = len(dist.share(items)) - len(todo) if len(items) > len(todo) else None
        run_batched(model, spec, todo, filter, batch_items, keep, Progress(progress, dist, len(todo), resumed))

    if out is None:
        run(lambda record: None)
    else:
        records = write_records(out, settings, dist, run)
    wanted = [records[i.id] for i in items if i.id in records]
    return DatasetResult(records=wanted, mode=spec.mode, layers=spec.layers, settings=settings)
