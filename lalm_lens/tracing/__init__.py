"""Causal tracing of audio-text fusion (Chen, Huang & Lee, Interspeech 2026; ROME).

    from lalm_lens.tracing import causal_trace, trace_dataset, attention_knockout
"""

from lalm_lens.tracing.corruption import Corruption, make_corruption
from lalm_lens.tracing.dataset import DatasetResult, Item, read_items, trace_dataset
from lalm_lens.tracing.groups import token_groups
from lalm_lens.tracing.knockout import KnockoutResult, attention_knockout
from lalm_lens.tracing.result import TraceResult
from lalm_lens.tracing.sakura import load_sakura
from lalm_lens.tracing.trace import answer_token, causal_trace

__all__ = [
    "Corruption", "DatasetResult", "Item", "KnockoutResult", "TraceResult", "answer_token", "attention_knockout",
    "causal_trace", "load_sakura", "make_corruption", "read_items", "token_groups", "trace_dataset",
]
