"""lalm-lens: TransformerLens-style hooked large audio language models and causal tracing."""

from lalm_lens.config import BlockConfig, EncoderConfig, LALMConfig, ProjectorConfig
from lalm_lens.inputs import AudioError, PreparedInput
from lalm_lens.model import HookedLALM

__version__ = "0.1.0"


def verify(*args, **kwargs):
    """Compare a hooked model with its original; see `lalm_lens.verification.verify`."""
    from lalm_lens.verification import verify as _verify

    return _verify(*args, **kwargs)


__all__ = [
    "AudioError", "BlockConfig", "EncoderConfig", "HookedLALM", "LALMConfig", "PreparedInput", "ProjectorConfig",
    "verify",
]
