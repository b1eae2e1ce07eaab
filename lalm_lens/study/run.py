"""`run_study`: every (model, item set, corruption, mode) traced, resumably, then the figures and report.

Each run is a `trace_dataset` into `out/<model>/<item set>/<corruption>/<mode>/records.jsonl`,
so a rerun resumes and a changed setting is refused; under torchrun every run is
shared out across the ranks and rank 0 writes the figures and `report.md`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from lalm_lens.study.config import ModelSpec, Study, read_study


def load(spec: ModelSpec, device: Optional[str]):
    import torch

    from lalm_lens import HookedLALM

    options = {k: v for k, v in (("encoder_path", spec.encoder_path), ("llm_path", spec.llm_path)) if v}
    model = HookedLALM.from_pretrained(spec.path, device=spec.device or device,
                                       dtype=getattr(torch, spec.dtype) if spec.dtype else None, **options)
    model.name_or_path = spec.name
    return model


def run_study(study: Study | str | Path, progress: bool = True, device: Optional[str] = None,
              overwrite: bool = False) -> dict:
    """Trace the whole study; returns `{(model, item set, corruption, mode): DatasetResult}`.

    A rerun resumes every run's records; a run whose settings changed is refused (`overwrite=True`,
    `lalm-lens study --overwrite`, redoes every run instead)."""
    from tqdm.auto import tqdm

    from lalm_lens.study.report import write_report
    from lalm_lens.tracing import distributed, trace_dataset
    from lalm_lens.tracing.records import SettingsMismatch

    study = study if isinstance(study, Study) else read_study(study)
    dist = distributed.from_env()
    device = device or distributed.default_device(dist)
    item_lists = {s.name: s.load() for s in study.item_sets}  # read before any model: a bad file fails fast
    total = sum(len(item_lists[s.name]) for _, s, _, _ in study.runs())
    bar = tqdm(total=total, desc="study", disable=not progress or not dist.main, unit="item")
    results, loaded = {}, {}
    for spec, item_set, label, mode in study.runs():
        if spec.name not in loaded:
            loaded.clear()  # one model in memory at a time
            loaded[spec.name] = load(spec, device)
        model = loaded[spec.name]
        folder = study.run_dir(spec, item_set, label, mode)
        bar.set_postfix_str(f"{spec.name} · {item_set.name} · {label} · {mode}")
        try:
            results[(spec.name, item_set.name, label, mode)] = trace_dataset(
                model, item_lists[item_set.name], out=folder / "records.jsonl", mode=mode, overwrite=overwrite,
                corruption=study.corruptions[label], progress=bar, **study.trace)
        except SettingsMismatch as err:
            reason = str(err).split(". Use a new")[0]
            raise SettingsMismatch(f"{reason}. Rerun with `lalm-lens study --overwrite` (run_study(..., "
                                   "overwrite=True)) to redo the study's runs, or set `out =` in the study file to a "
                                   "new folder") from None
    bar.close()
    if dist.main:
        write_report(study, results)
    return results
