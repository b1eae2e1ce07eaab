"""Features and steering: SAEs/transcoders on any hook, their file formats, interventions as values."""

from lalm_lens.features.attribution import FeatureAttribution, feature_attribution
from lalm_lens.features.cells import FeatureTrace, feature_trace
from lalm_lens.features.formats import load_sae, load_saelens, load_sparsify, save_saelens, save_sparsify
from lalm_lens.features.interventions import (AblateHead, AddDirection, ClampFeature, ScaleNeuron, audio_direction,
                                              head_audio_attention, intervention_hooks, steering_effect)
from lalm_lens.features.sae import SAE, SAEConfig
from lalm_lens.features.splice import SAE_HOOKS

__all__ = [
    "FeatureAttribution", "FeatureTrace", "feature_attribution", "feature_trace", "SAE", "SAEConfig", "SAE_HOOKS", "AblateHead", "AddDirection", "ClampFeature", "ScaleNeuron", "audio_direction",
    "head_audio_attention", "intervention_hooks", "load_sae", "load_saelens", "load_sparsify", "save_saelens",
    "save_sparsify", "steering_effect",
]
