"""Causal tracing of audio-text fusion (Chen, Huang & Lee, Interspeech 2026; ROME).

    from lalm_lens.tracing import causal_trace, trace_dataset, attention_knockout
    from lalm_lens.tracing import Silence, GaussianNoise, WhiteNoise, Swap, answer_prob, logit_diff, option_prob
    from lalm_lens.tracing import audio_time_trace, head_trace, logit_lens   # when in the clip, which heads, what each layer knows
    from lalm_lens.tracing import expert_routing_trace, expert_trace        # mixture of experts: routing, which experts
"""

from lalm_lens.tracing.checks import Check, Checks, IllPosedTraceWarning
from lalm_lens.tracing.dataset import DatasetResult, Item, read_items, trace_dataset
from lalm_lens.tracing.engines import AttributionEngine, FastEngine, ReferenceEngine
from lalm_lens.tracing.experts import ExpertRouting, ExpertTrace, expert_routing_trace, expert_trace
from lalm_lens.tracing.groups import token_groups
from lalm_lens.tracing.interventions import Corruption, CorruptedRun, GaussianNoise, Given, Silence, Swap, WhiteNoise
from lalm_lens.tracing.knockout import KnockoutResult, attention_knockout
from lalm_lens.tracing.lens import LensResult, logit_lens
from lalm_lens.tracing.metrics import Metric, answer_prob, logit_diff, option_prob
from lalm_lens.tracing.results import LayerTrace, TokenTrace, TraceResult
from lalm_lens.tracing.sakura import load_sakura
from lalm_lens.tracing.sweeps import HeadTrace, TimeTrace, audio_time_trace, head_trace
from lalm_lens.tracing.pipeline import answer_token
from lalm_lens.tracing.trace import causal_trace

__all__ = [
    "AttributionEngine", "Check", "HeadTrace", "LensResult", "TimeTrace", "audio_time_trace", "head_trace",
    "logit_lens", "Checks", "CorruptedRun", "Corruption", "DatasetResult", "FastEngine",
    "GaussianNoise", "Given", "IllPosedTraceWarning", "Item", "KnockoutResult", "LayerTrace", "Metric",
    "ReferenceEngine", "Silence", "Swap", "TokenTrace", "TraceResult", "WhiteNoise", "answer_prob", "answer_token",
    "attention_knockout", "causal_trace", "load_sakura", "logit_diff", "option_prob", "read_items", "token_groups",
    "trace_dataset", "ExpertRouting", "ExpertTrace", "expert_routing_trace", "expert_trace",
]
