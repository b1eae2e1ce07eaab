"""The two errors of checkpoint conversion."""

from __future__ import annotations


class CheckpointError(RuntimeError):
    """The checkpoint does not match what the family's converter expects."""


class UnknownFamilyError(ValueError):
    """config.json names a model type no family handles."""
