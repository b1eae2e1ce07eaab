"""Real configs in CI: each family's key table covers the released checkpoint, shape for shape.

The original is built with the released config on the `meta` device (no memory),
and its state dict streamed through our key table into a meta-device `HookedLALM`:
every key must map to a parameter of the right shape, and no parameter of ours
may be left unfilled (except those the family declares absent).
"""

from pathlib import Path

import pytest
import torch

from lalm_lens import HookedLALM
from lalm_lens.families import family_for
from tests import real_configs as rc
from weight_conversion.base import finish_loading, load_checkpoint


def meta_tensors(module) -> list:
    return [(k, v, "meta") for k, v in module.state_dict().items()]


def check_coverage(family, config, sources) -> HookedLALM:
    """Stream `(tensors, key_map)` sources into a meta model; fails on any unmapped, misshapen or missing key."""
    for cfg in (config.lm, config.encoder):
        cfg.dtype = torch.bfloat16
    with torch.device("meta"):
        ours = (family.model_class or HookedLALM)(config)
    filled = set()
    for tensors, key_map in sources:
        filled |= load_checkpoint(ours, tensors, key_map, what=f"released {family.name}")
    finish_loading(ours, filled, family.absent, what=f"released {family.name}")
    return ours


def hf_case(config_cls_name, model_cls_name, values):
    import transformers

    config = getattr(transformers, config_cls_name)(**values)
    with torch.device("meta"):
        original = getattr(transformers, model_cls_name)(config)
    family = family_for(values["model_type"])
    ours_config = family.convert_config(config)
    return family, ours_config, [(meta_tensors(original), family.key_map(ours_config))]


def omni_case():
    """The full Omni model (thinker, talker, vocoder) streamed through the thinker's key table."""
    from transformers import Qwen2_5OmniConfig, Qwen2_5OmniForConditionalGeneration

    from weight_conversion import qwen2_5_omni as conversion

    config = Qwen2_5OmniConfig(**rc.QWEN2_5_OMNI_7B)
    with torch.device("meta"):
        original = Qwen2_5OmniForConditionalGeneration(config)
    family = family_for("qwen2_5_omni")
    ours_config = family.convert_config(conversion.thinker_config(config))
    return family, ours_config, [(meta_tensors(original), family.key_map(ours_config))]


def released_expert_keys(tensors):
    """transformers 5 holds the experts fused (`experts.gate_up_proj`, `experts.down_proj`); the released
    Qwen3-Omni shards hold them one by one (`experts.{e}.gate_proj|up_proj|down_proj.weight`)."""
    for key, t, where in tensors:
        if key.endswith("mlp.experts.gate_up_proj"):
            n, two_i, d = t.shape
            for e in range(n):
                for name in ("gate_proj", "up_proj"):
                    yield key[: -len("gate_up_proj")] + f"{e}.{name}.weight", torch.empty(two_i // 2, d, device="meta"), where
        elif key.endswith("mlp.experts.down_proj"):
            n, d, i = t.shape
            for e in range(n):
                yield key[: -len("down_proj")] + f"{e}.down_proj.weight", torch.empty(d, i, device="meta"), where
        else:
            yield key, t, where


def qwen3_omni_case():
    """The thinker of Qwen3-Omni under `thinker.` with its experts one by one, as released, streamed through
    the family's key table. (That the talker, code predictor and code2wav shards are never read is tested on
    a tiny full checkpoint.)"""
    from transformers import Qwen3OmniMoeConfig, Qwen3OmniMoeThinkerForConditionalGeneration

    from weight_conversion import qwen3_omni_moe as conversion

    config = conversion.thinker_config(Qwen3OmniMoeConfig(**rc.QWEN3_OMNI_30B_A3B_INSTRUCT))
    with torch.device("meta"):
        original = Qwen3OmniMoeThinkerForConditionalGeneration(config)
    family = family_for("qwen3_omni_moe")
    ours_config = family.convert_config(config)
    released = {"model.language_model.": "model.", "model.audio_tower.": "audio_tower.", "model.visual.": "visual."}
    tensors = []
    for key, t, where in released_expert_keys(meta_tensors(original)):
        prefix = next((p for p in released if key.startswith(p)), "")
        tensors.append(("thinker." + released.get(prefix, "") + key[len(prefix):], t, where))
    assert sum(k.endswith(".mlp.experts.127.down_proj.weight") for k, _, _ in tensors) == 48
    return family, ours_config, [(tensors, family.key_map(ours_config))]


def desta_case(version_name):
    from transformers import LlamaConfig, LlamaForCausalLM, WhisperConfig, WhisperForConditionalGeneration

    from lalm_lens.families.desta.reference import DestaConnector
    from weight_conversion import desta as conversion

    values = rc.DESTA25 if version_name == "desta25" else rc.DESTA2
    version = conversion.DESTA25 if version_name == "desta25" else conversion.DESTA2
    whisper = WhisperConfig(**(rc.WHISPER_LARGE_V3 if version_name == "desta25" else rc.WHISPER_SMALL))
    llama = LlamaConfig(**(rc.LLAMA_31_8B if version_name == "desta25" else rc.LLAMA_3_8B))
    src = conversion.DestaSources(values, version, Path("whisper"), Path("llm"), whisper, llama, placeholder_id=128095)
    config = conversion.convert_config(src)
    p = config.projector
    with torch.device("meta"):
        w, lm = WhisperForConditionalGeneration(whisper), LlamaForCausalLM(llama)
        connector = DestaConnector(p.d_in, p.extra["n_heads"], p.extra["n_layers"], len(p.extra["taps"]),
                                   p.extra["n_queries"], p.d_out)
    prefix = version.checkpoint_prefix
    connector_tensors = [(prefix + k, v, "meta") for k, v in connector.state_dict().items()]
    return family_for(values["model_type"]), config, [
        (meta_tensors(w), conversion.whisper_key_map()), (meta_tensors(lm), conversion.llm_key_map(config)),
        (connector_tensors, conversion.connector_key_map(config))]


def qwen_audio_case():
    from weight_conversion import qwen_audio as conversion

    config = conversion.convert_config(conversion.config_from_dict(rc.QWEN_AUDIO_CHAT))
    tensors = [(k, torch.empty(shape, device="meta"), "meta") for k, shape in rc.qwen_audio_keys(rc.QWEN_AUDIO_CHAT).items()]
    return family_for("qwen"), config, [(tensors, conversion.key_map(config))]


def granite_speech_case(values):
    """The base model's keys and the adapter's (peft's file layout), each through its own key table."""
    from peft import LoraConfig, get_peft_model_state_dict
    from transformers import GraniteSpeechConfig, GraniteSpeechForConditionalGeneration

    from lalm_lens.families.granite_speech.reference import add_lora
    from weight_conversion import granite_speech as conversion

    config = GraniteSpeechConfig(**values)
    with torch.device("meta"):
        original = GraniteSpeechForConditionalGeneration(config)
        base = meta_tensors(original)
        add_lora(original, LoraConfig(**rc.GRANITE_SPEECH_LORA))
    adapter = [("base_model.model." + k, v, "meta") for k, v in get_peft_model_state_dict(original).items()]
    ours_config = conversion.convert_config(conversion.GraniteSpeechSource(config, rc.GRANITE_SPEECH_LORA))
    assert ours_config.lm.lora == dict(rank=64, scale=0.5, targets=["q", "v"]) and ours_config.lm.rotary_base == 1e7
    return family_for("granite_speech"), ours_config, [(base, conversion.key_map(ours_config)),
                                                      (adapter, conversion.adapter_key_map(ours_config))]


CASES = {
    "Qwen2-Audio-7B-Instruct": lambda: hf_case("Qwen2AudioConfig", "Qwen2AudioForConditionalGeneration",
                                               rc.QWEN2_AUDIO_7B_INSTRUCT),
    "Voxtral-Mini-3B-2507": lambda: hf_case("VoxtralConfig", "VoxtralForConditionalGeneration", rc.VOXTRAL_MINI_3B),
    "Voxtral-Small-24B-2507": lambda: hf_case("VoxtralConfig", "VoxtralForConditionalGeneration", rc.VOXTRAL_SMALL_24B),
    "DeSTA2.5-Audio-Llama-3.1-8B": lambda: desta_case("desta25"),
    "DeSTA2-8B-beta": lambda: desta_case("desta2"),
    "Qwen-Audio-Chat": qwen_audio_case,
    "audio-flamingo-3-hf": lambda: hf_case("AudioFlamingo3Config", "AudioFlamingo3ForConditionalGeneration",
                                           rc.AUDIO_FLAMINGO_3),
    "Qwen2.5-Omni-7B": omni_case,
    "Qwen3-Omni-30B-A3B-Instruct": qwen3_omni_case,  # the fused in-memory layout is tested on a tiny model
    "Voxtral-Mini-4B-Realtime-2602": lambda: hf_case("VoxtralRealtimeConfig", "VoxtralRealtimeForConditionalGeneration",
                                                     rc.VOXTRAL_MINI_4B_REALTIME),
    "music-flamingo-2601-hf": lambda: hf_case("MusicFlamingoConfig", "MusicFlamingoForConditionalGeneration",
                                              rc.MUSIC_FLAMINGO),
    "granite-speech-3.3-2b": lambda: granite_speech_case(rc.GRANITE_SPEECH_3_3_2B),
    "granite-speech-3.3-8b": lambda: granite_speech_case(rc.GRANITE_SPEECH_3_3_8B),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_key_table_covers_the_released_checkpoint(name):
    family, config, sources = CASES[name]()
    ours = check_coverage(family, config, sources)
    n_params = sum(p.numel() for p in ours.parameters())
    print(f"\n[real config {name}] {family.name}: {n_params / 1e9:.2f} B parameters, every key mapped")
    assert n_params > 1e9
