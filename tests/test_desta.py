"""DeSTA2.5: our hooked model against the reference assembled from HF parts as the original wires them."""

import json

import pytest
import torch

from lalm_lens import HookedLALM
from tests.tiny_models import ANSWER_PREFIX, PROMPT, assert_bf16_agrees, clip, reference_of, save_desta

TOL = 1e-4
SAID = "hello world it is a test recording"


@pytest.fixture(scope="module")
def reference(desta_dir):

    return reference_of(desta_dir, dtype=torch.float32, device="cpu")


def max_diff(a, b, valid=None):
    d = (a.float() - b.float()).abs()
    if valid is not None:
        d = d[valid.bool()]
    return d.max().item()


def test_prompt_layout(desta):
    inp = desta.prepare(clip(2.0), PROMPT, answer_prefix=ANSWER_PREFIX, transcript=SAID, options=["male", "female"],
                        sampling_rate=16000)
    tokens = inp.str_tokens[0]
    slots = inp.audio_positions[0]
    assert len(slots) == 64 and all(tokens[i] == "<|reserved_special_token_87|>" for i in slots)
    assert tokens[slots[0] - 3: slots[0]] == ["<", "start_audio", ">"]  # plain text around the audio
    a, b = inp.spans[0]["transcript"]
    assert a == slots[-1] + 1 and tokens[a:b] == SAID.split()
    assert tokens[b: b + 3] == ["<", "end_audio", ">"]
    assert tokens[0] == "<|begin_of_text|>" and tokens.count("<|begin_of_text|>") == 1
    assert tokens[-5:] == ["The", "speaker", "'", "s", "gender"] or tokens[-1] == "is"
    from lalm_lens.tracing import token_groups

    groups = token_groups(inp)
    assert groups.count("transcript") == len(SAID.split()) and groups.count("audio") == 64
    assert [tokens[i] for i, g in enumerate(groups) if g == "object"] == ["male", ",", "female"]
    assert inp["input_features"].shape == (1, 128, 3000)


@torch.no_grad()
def test_logits_and_every_layer_match_reference(desta, reference):
    inp = desta.prepare(clip(2.5), PROMPT, answer_prefix=ANSWER_PREFIX, transcript=SAID, sampling_rate=16000)
    logits, cache = desta.run_with_cache(inp)
    outputs = []
    handles = [l.register_forward_hook(lambda m, a, o: outputs.append(o[0] if isinstance(o, tuple) else o))
               for l in reference.encoder.layers]
    ref = reference(**inp)
    for h in handles:
        h.remove()
    assert max_diff(logits, ref.logits) <= TOL
    for i, hidden in enumerate(outputs):
        assert max_diff(cache[f"audio_encoder.blocks.{i}.hook_resid_post"], hidden) <= TOL, i
    assert max_diff(cache["hook_audio_embeds"], ref.audio_embeds) <= TOL
    n = desta.cfg.n_layers
    for layer in range(n):
        assert max_diff(cache["resid_pre", layer], ref.hidden_states[layer]) <= TOL
    assert max_diff(desta.ln_final(cache["resid_post", n - 1]), ref.hidden_states[n]) <= TOL
    # Q-Former hooks: bidirectional self-attention over the queries, cross-attention over every frame.
    pattern = cache["audio_projector.layers.0.attn.hook_pattern"]
    assert pattern.shape == (4, 4, 64, 64) and (pattern[0, 0].triu(1) > 0).any()
    assert cache["audio_projector.layers.1.cross_attn.hook_pattern"].shape[-1] == 1500
    assert torch.allclose(cache["audio_projector.hook_tap_weights"].sum(-1), torch.ones(64))


@torch.no_grad()
def test_batch_of_two_clips(desta, reference):
    inp = desta.prepare([clip(1.0, seed=1), clip(3.0, seed=2)], [PROMPT, "Describe the audio ."],
                        transcript=[SAID, "hello"], sampling_rate=16000)
    assert (inp["attention_mask"] == 0).any()
    assert max_diff(desta(inp), reference(**inp).logits, inp["attention_mask"]) <= TOL


@torch.no_grad()
def test_generate_equals_reference_greedy(desta, reference):
    inp = desta.prepare(clip(2.0, seed=3), PROMPT, transcript=SAID, sampling_rate=16000)
    ours = desta.generate(inp, max_new_tokens=6, return_type="tokens", eos_token_ids=[])
    ref = reference.generate(**inp, max_new_tokens=6, eos_token_id=None, pad_token_id=0)
    assert torch.equal(ours, ref)


@torch.no_grad()
def test_bfloat16(desta_dir, reference):

    ours = HookedLALM.from_pretrained(desta_dir, device="cpu", dtype=torch.bfloat16)
    ref = reference_of(desta_dir, dtype=torch.bfloat16, device="cpu")
    inp = ours.prepare(clip(2.0), PROMPT, answer_prefix=ANSWER_PREFIX, transcript=SAID, sampling_rate=16000)
    a, b = ours(inp), ref(**inp).logits
    assert_bf16_agrees(a, b, reference(**inp).logits)


def test_hub_ids_with_local_overrides_and_verify(tmp_path):
    """config.json names hub ids; encoder_path= / llm_path= point at local folders (no network)."""
    import lalm_lens

    folder = save_desta(tmp_path, seed=4, hub_ids=True)
    assert json.loads((folder / "config.json").read_text())["encoder_model_id"] == "openai/whisper-large-v3"
    with pytest.raises(Exception, match="could not download 'openai/whisper-large-v3'"):
        HookedLALM.from_pretrained(folder, device="cpu")
    model = HookedLALM.from_pretrained(folder, device="cpu", encoder_path=tmp_path / "whisper", llm_path=tmp_path / "llm")
    assert model.config.projector.extra["taps"] == (0, 1, 2, 3)
    report = lalm_lens.verify(str(folder), device="cpu", encoder_path=tmp_path / "whisper", llm_path=tmp_path / "llm",
                              prepare_kwargs={"transcript": SAID})
    assert report.passed and len(report.encoder_layers) == 4 and report.audio_embeds_diff <= TOL, str(report)


def test_transcript_from_whisper_generate(desta):
    inp = desta.prepare(clip(1.0), PROMPT, sampling_rate=16000)  # no transcript: greedy Whisper decoding
    said = inp.meta["transcript"][0]
    assert isinstance(said, str)
    a, b = inp.spans[0]["transcript"]
    assert b - a == len(desta.tokenizer(said, add_special_tokens=False)["input_ids"])


def test_taps_follow_the_whisper_size(desta):
    from weight_conversion.desta import DESTA25

    assert DESTA25.taps[32] == (7, 15, 23, 31)  # large-v3, as the original
    assert desta.config.projector.extra["taps"] == (0, 1, 2, 3)  # tiny
    assert isinstance(desta.audio_projector.layer_prompts[0], torch.nn.Parameter)


@torch.no_grad()
def test_desta2_layout_taps_and_reference(tmp_path):
    """DeSTA2: whisper-small-shaped taps (encoder_hidden_states 2, 5, 8, 11 = layer outputs 1, 4, 7, 10),
    a 2-layer Q-Former from qformer_connector.pth, the `audio` turn with the double BOS."""
    from tests.tiny_models import save_desta2

    folder = save_desta2(tmp_path)
    model = HookedLALM.from_pretrained(folder, device="cpu")
    assert model.config.family == "desta2" and model.config.projector.extra["taps"] == (1, 4, 7, 10)
    assert len(model.audio_projector.layers) == 2 and model.config.encoder.n_mels == 80
    inp = model.prepare(clip(2.0), PROMPT, answer_prefix=ANSWER_PREFIX, transcript=" hello world",
                        options=["male", "female"], sampling_rate=16000)
    tokens = inp.str_tokens[0]
    assert tokens[:2] == ["<|begin_of_text|>", "<|begin_of_text|>"]  # the template's BOS and the tokenizer's
    slots = inp.audio_positions[0]
    # inserted at the count of the audio turn's tokens without BOS, so one token early: before the
    # header's last token (here `<|end_header_id|>`; "\n\n" with the real BPE tokenizer)
    assert tokens[slots[0] - 1] == "audio" and tokens[slots[-1] + 1] == "<|end_header_id|>"
    a, b = inp.spans[0]["transcript"]
    assert tokens[a:b] == ["hello", "world"] and a == slots[-1] + 2
    ref = reference_of(folder, dtype=torch.float32, device="cpu")
    logits, cache = model.run_with_cache(inp)
    out = ref(**inp)
    assert max_diff(logits, out.logits) <= TOL
    assert max_diff(cache["hook_audio_embeds"], out.audio_embeds) <= TOL


def test_cli_verify_and_trace(desta_dir, tmp_path, capsys):
    import soundfile

    from lalm_lens.cli import main
    from lalm_lens.tracing import TraceResult

    assert main(["verify", str(desta_dir), "--transcript", SAID, "--device", "cpu"]) == 0
    assert "PASS" in capsys.readouterr().out
    wav = tmp_path / "a.wav"
    soundfile.write(wav, clip(1.5), 16000)
    out = tmp_path / "out"
    assert main(["trace", "--model", str(desta_dir), "--audio", str(wav), "--prompt", PROMPT, "--answer", "male",
                 "--options", "male", "female", "--answer-prefix", ANSWER_PREFIX, "--transcript", SAID,
                 "--mode", "tokens", "--out", str(out), "--device", "cpu", "--allow-ill-posed"]) == 0
    result = TraceResult.load(out / "trace_tokens.json")
    assert "transcript" in set(result.groups.values()) and (out / "heatmap_tokens.png").is_file()
