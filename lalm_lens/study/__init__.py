"""Whole studies: models x item sets x corruptions x modes, resumable, torchrun-ready (`lalm-lens study`)."""

from lalm_lens.study.config import ItemSet, ModelSpec, Study, StudyConfigError, read_study
from lalm_lens.study.run import run_study

__all__ = ["ItemSet", "ModelSpec", "Study", "StudyConfigError", "read_study", "run_study"]
