"""Builders for tiny random checkpoints of each family (real HF config classes, `save_pretrained`)."""

from pathlib import Path

import numpy as np
import torch

PROMPT_WORDS = (
    "What is the gender of speaker ? Possible options : male , female . The ' s sound animal pitch high low "
    "Describe audio"
).split()
PROMPT = "What is the gender of the speaker? Possible options: male, female."
ANSWER_PREFIX = "The speaker's gender is"


def clip(seconds: float, seed: int = 0, rate: int = 16000) -> np.ndarray:
    """A deterministic test waveform: a tone plus noise."""
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * (220 + 110 * seed) * t) + 0.05 * rng.standard_normal(t.shape)).astype(np.float32)


NORM_NAMES = ("norm", "layernorm", "ln_", "LayerNorm")


def scale_init(model: torch.nn.Module, seed: int = 0, head_scale: float = 3.0) -> torch.nn.Module:
    """Weights a bug cannot hide under: transformers' default init (std 0.02) makes tiny models'
    logits ~1e-2, where dropping a bias or attending to padding moves them by < 1e-6. Here matrices
    are drawn at 1/sqrt(fan_in), biases at 0.1, norm scales around 1, embeddings at 1, and the LM head
    at `head_scale`/sqrt(width), so logits are O(1-10) and every path moves them visibly."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                value = 0.1 * torch.randn(p.shape, generator=gen)
            elif any(n in name for n in NORM_NAMES) and p.ndim == 1:
                value = 1 + 0.1 * torch.randn(p.shape, generator=gen)
            elif "embed" in name or "prompts" in name or p.ndim == 1:
                value = torch.randn(p.shape, generator=gen)
            elif "lm_head" in name:
                value = head_scale * torch.randn(p.shape, generator=gen) / p.shape[-1] ** 0.5
            else:
                fan_in = p[0].numel()
                value = torch.randn(p.shape, generator=gen) / fan_in ** 0.5
            p.copy_(value.to(p.dtype))
    return model


def qwen2_audio_config(n_kv_heads: int = 2, **text_overrides):
    from transformers import Qwen2AudioConfig

    text = dict(
        model_type="qwen2", vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=n_kv_heads, **text_overrides,
    )
    audio = dict(
        model_type="qwen2_audio_encoder", d_model=64, encoder_layers=2, encoder_attention_heads=4,
        encoder_ffn_dim=128, num_mel_bins=128, max_source_positions=1500,
    )
    return Qwen2AudioConfig(audio_config=audio, text_config=text, audio_token_index=255)


def save_qwen2_audio(folder: Path, n_kv_heads: int = 2, seed: int = 0, **text_overrides) -> Path:
    from transformers import Qwen2AudioForConditionalGeneration

    from lalm_lens.toy import qwen2_audio_processor

    torch.manual_seed(seed)
    model = Qwen2AudioForConditionalGeneration(qwen2_audio_config(n_kv_heads, **text_overrides)).eval()
    scale_init(model, seed=seed)
    model.save_pretrained(folder)
    qwen2_audio_processor(PROMPT_WORDS, vocab_size=256, audio_token_id=255).save_pretrained(folder)
    return Path(folder)


def voxtral_config(head_dim: int = 16, tie: bool = False, vocab: int = 1280):
    from transformers import VoxtralConfig

    audio = dict(model_type="voxtral_encoder", hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                 num_attention_heads=4, num_mel_bins=128, max_source_positions=1500)
    text = dict(model_type="llama", vocab_size=vocab, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=head_dim, tie_word_embeddings=tie)
    return VoxtralConfig(audio_config=audio, text_config=text, audio_token_id=24)


def save_voxtral(folder: Path, seed: int = 0, **kwargs) -> Path:
    """Tiny Voxtral (text ids start after 1000 special tokens, so vocab 1280) with a tekken processor."""
    from transformers import VoxtralForConditionalGeneration

    from lalm_lens.toy import voxtral_processor

    torch.manual_seed(seed)
    model = VoxtralForConditionalGeneration(voxtral_config(**kwargs)).eval()
    scale_init(model, seed=seed)
    model.save_pretrained(folder)
    voxtral_processor(folder)
    return Path(folder)


LLAMA31_SPECIALS = ("<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
                    "<|reserved_special_token_87|>")
# The Llama-3.1 chat template's shape: a system header with the knowledge-cutoff lines, then turns.
LLAMA31_TEMPLATE = (
    "{{ '<|begin_of_text|>' }}"
    "{% if messages[0]['role'] == 'system' %}{% set system = messages[0]['content'] %}{% set messages = messages[1:] %}"
    "{% else %}{% set system = '' %}{% endif %}"
    "{{ '<|start_header_id|>system<|end_header_id|>\\n\\nCutting Knowledge Date: December 2023\\n"
    "Today Date: 26 Jul 2024\\n\\n' + system + '<|eot_id|>' }}"
    "{% for message in messages %}{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'"
    " + message['content'] | trim + '<|eot_id|>' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


def save_desta(root: Path, seed: int = 0, encoder_layers: int = 4, hub_ids: bool = False) -> Path:
    """Three folders like the released DeSTA2.5: a tiny Whisper, a tiny Llama-3.1, and the connector."""
    import json

    from safetensors.torch import save_file
    from transformers import (LlamaConfig, LlamaForCausalLM, WhisperConfig, WhisperFeatureExtractor,
                              WhisperForConditionalGeneration)

    from lalm_lens.families.desta.reference import DestaConnector
    from lalm_lens.toy import word_tokenizer, words_of

    root = Path(root)
    torch.manual_seed(seed)
    whisper = WhisperForConditionalGeneration(WhisperConfig(
        d_model=64, encoder_layers=encoder_layers, encoder_attention_heads=4, encoder_ffn_dim=128, decoder_layers=1,
        decoder_attention_heads=4, decoder_ffn_dim=128, num_mel_bins=128, vocab_size=96, max_source_positions=1500,
        max_target_positions=160, pad_token_id=93, bos_token_id=94, eos_token_id=95, decoder_start_token_id=94))
    scale_init(whisper, seed=seed)
    whisper.save_pretrained(root / "whisper")
    WhisperFeatureExtractor(feature_size=128).save_pretrained(root / "whisper")
    # A word-level decoding vocabulary for the tiny Whisper's transcripts (ids 93-95: pad, start, end).
    decoder_words = ["hello", "world", "it", "is", "a", "test", "recording", "male", "female"]
    word_tokenizer(decoder_words, ("<|pad|>", "<|startoftranscript|>", "<|endoftext|>"), vocab_size=96).save_pretrained(
        root / "whisper")
    rope = dict(rope_type="llama3", rope_theta=500000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                original_max_position_embeddings=64)
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, rope_parameters=rope,
                                       max_position_embeddings=1024, bos_token_id=250, eos_token_id=254))
    scale_init(llm, seed=seed + 2)
    llm.save_pretrained(root / "llm")
    words = words_of([PROMPT, ANSWER_PREFIX, "Focus on the audio clips and instructions. <start_audio> <end_audio>",
                      "Cutting Knowledge Date: December 2023 Today Date: 26 Jul 2024 system user assistant",
                      "hello world it is a test recording"])
    tok = word_tokenizer(words, LLAMA31_SPECIALS, vocab_size=256)
    tok.bos_token, tok.eos_token, tok.pad_token = "<|begin_of_text|>", "<|eot_id|>", "<|eot_id|>"
    tok.chat_template = LLAMA31_TEMPLATE
    tok.save_pretrained(root / "llm")
    connector = DestaConnector(64, 4, 2, 4, 64, 64)  # four taps
    scale_init(connector, seed=seed + 1)
    with torch.no_grad():
        connector.layer_weights.normal_(0, 1.0)
    (root / "desta").mkdir(parents=True, exist_ok=True)
    save_file({f"perception.connector.{k}": v.contiguous() for k, v in connector.state_dict().items()},
              root / "desta" / "model.safetensors")
    config = dict(model_type="desta25", connector_mode="qformer_1", prompt_size=64, qformer_num_hidden_layers=2,
                  audio_locator="<|AUDIO|>", placeholder_token="<|reserved_special_token_87|>",
                  encoder_model_id="openai/whisper-large-v3" if hub_ids else str(root / "whisper"),
                  llm_model_id="DeSTA-ntu/Llama-3.1-8B-Instruct" if hub_ids else str(root / "llm"))
    (root / "desta" / "config.json").write_text(json.dumps(config))
    return root / "desta"


LLAMA3_TEMPLATE = (  # Llama-3 (not 3.1): no knowledge-cutoff lines; any role name
    "{{ '<|begin_of_text|>' }}{% for message in messages %}"
    "{{ '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n' + message['content'] | trim + '<|eot_id|>' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}{% endif %}"
)


def save_desta2(root: Path, seed: int = 0) -> Path:
    """Like the released DeSTA2: a 12-layer (whisper-small-shaped, 80 mels) Whisper, a Llama-3 whose
    tokenizer adds BOS, and `qformer_connector.pth` with unprefixed keys."""
    import json

    from tokenizers.processors import TemplateProcessing
    from transformers import (LlamaConfig, LlamaForCausalLM, WhisperConfig, WhisperFeatureExtractor,
                              WhisperForConditionalGeneration)

    from lalm_lens.families.desta.reference import DestaConnector
    from lalm_lens.toy import word_tokenizer, words_of

    root = Path(root)
    torch.manual_seed(seed)
    whisper = WhisperForConditionalGeneration(WhisperConfig(
        d_model=64, encoder_layers=12, encoder_attention_heads=4, encoder_ffn_dim=128, decoder_layers=1,
        decoder_attention_heads=4, decoder_ffn_dim=128, num_mel_bins=80, vocab_size=96, max_source_positions=1500,
        max_target_positions=64, pad_token_id=0, bos_token_id=1, eos_token_id=2, decoder_start_token_id=1))
    scale_init(whisper, seed=seed)
    whisper.save_pretrained(root / "whisper")
    WhisperFeatureExtractor(feature_size=80).save_pretrained(root / "whisper")
    llm = LlamaForCausalLM(LlamaConfig(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                                       num_attention_heads=4, num_key_value_heads=2, bos_token_id=250,
                                       eos_token_id=254))
    scale_init(llm, seed=seed + 2)
    llm.save_pretrained(root / "llm")
    words = words_of([PROMPT, ANSWER_PREFIX, "Focus on the audio clips and instructions. audio system user assistant",
                      "hello world it is a test recording"])
    tok = word_tokenizer(words, LLAMA31_SPECIALS, vocab_size=256)
    bos = tok.convert_tokens_to_ids("<|begin_of_text|>")
    tok.backend_tokenizer.post_processor = TemplateProcessing(single="<|begin_of_text|> $A",
                                                              special_tokens=[("<|begin_of_text|>", bos)])
    tok.bos_token, tok.eos_token, tok.pad_token = "<|begin_of_text|>", "<|eot_id|>", "<|eot_id|>"
    tok.chat_template = LLAMA3_TEMPLATE
    tok.save_pretrained(root / "llm")
    connector = DestaConnector(64, 4, 2, 4, 64, 64)
    scale_init(connector, seed=seed + 1)
    with torch.no_grad():
        connector.layer_weights.normal_(0, 1.0)
    (root / "desta2").mkdir(parents=True, exist_ok=True)
    torch.save(connector.state_dict(), root / "desta2" / "qformer_connector.pth")
    config = dict(model_type="DestaModel", prompt_size=64, whisper_model_id=str(root / "whisper"),
                  llama_model_id=str(root / "llm"))
    (root / "desta2" / "config.json").write_text(json.dumps(config))
    return root / "desta2"


def save_qwen_audio(folder: Path, seed: int = 0, chat: bool = True) -> Path:
    """A tiny Qwen-Audio(-Chat) v1 checkpoint written directly in the released key layout,
    with a byte-level `qwen.tiktoken` vocabulary."""
    import base64
    import json

    from safetensors.torch import save_file

    from lalm_lens.components.audio_encoder import sinusoids
    from lalm_lens.families.qwen_audio.tokenizer import AUDIO_SPECIALS, SPECIALS

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    pieces = [bytes([i]) for i in range(256)] + [b"he", b"th", b"the", b" the", b"is", b" is", b"er", b" s"]
    (folder / "qwen.tiktoken").write_bytes(
        b"".join(base64.b64encode(p) + b" " + str(r).encode() + b"\n" for r, p in enumerate(pieces)))
    n_vocab = len(pieces) + len(SPECIALS)
    start_id = len(pieces) + 3 + 205 + AUDIO_SPECIALS.index("<audio>")
    d, layers, inter = 64, 2, 256
    config = dict(model_type="qwen", architectures=["QWenLMHeadModel"], hidden_size=d, num_attention_heads=4,
                  num_hidden_layers=layers, kv_channels=16, intermediate_size=inter, seq_length=2048,
                  max_position_embeddings=8192, rotary_emb_base=10000, rotary_pct=1.0, layer_norm_epsilon=1e-6,
                  vocab_size=n_vocab + 9, no_bias=True, use_dynamic_ntk=True, use_logn_attn=True,
                  tie_word_embeddings=False,
                  audio=dict(n_mels=80, n_ctx=1500, n_state=d, n_head=4, n_layer=2, output_dim=d, avg_pool=True,
                             add_audio_bos_eos_token=True, audio_start_id=start_id))
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "generation_config.json").write_text(json.dumps(
        dict(chat_format="chatml" if chat else "raw", eos_token_id=len(pieces), pad_token_id=len(pieces))))
    gen = torch.Generator().manual_seed(seed)
    rnd = lambda *shape, std=0.05: torch.randn(shape, generator=gen) * std  # noqa: E731
    V = config["vocab_size"]
    w = {"transformer.wte.weight": rnd(V, d, std=0.5), "transformer.ln_f.weight": 1 + rnd(d),
         "lm_head.weight": rnd(V, d, std=0.2)}
    for i in range(layers):
        h = f"transformer.h.{i}."
        w.update({h + "ln_1.weight": 1 + rnd(d), h + "ln_2.weight": 1 + rnd(d),
                  h + "attn.c_attn.weight": rnd(3 * d, d, std=0.2), h + "attn.c_attn.bias": rnd(3 * d, std=0.1),
                  h + "attn.c_proj.weight": rnd(d, d, std=0.2), h + "mlp.w1.weight": rnd(inter // 2, d, std=0.2),
                  h + "mlp.w2.weight": rnd(inter // 2, d, std=0.2), h + "mlp.c_proj.weight": rnd(d, inter // 2, std=0.2)})
    e = "transformer.audio."
    w.update({e + "conv1.weight": rnd(d, 80, 3, std=0.1), e + "conv1.bias": rnd(d), e + "conv2.weight": rnd(d, d, 3, std=0.1),
              e + "conv2.bias": rnd(d), e + "positional_embedding": sinusoids(1500, d), e + "ln_post.weight": 1 + rnd(d),
              e + "ln_post.bias": rnd(d), e + "proj.weight": rnd(d, d, std=0.2), e + "proj.bias": rnd(d),
              e + "audio_bos_eos_token.weight": rnd(2, d, std=0.5)})
    for i in range(2):
        b = f"{e}blocks.{i}."
        for name in ("query", "value", "out"):
            w.update({b + f"attn.{name}.weight": rnd(d, d, std=0.2), b + f"attn.{name}.bias": rnd(d)})
        w.update({b + "attn.key.weight": rnd(d, d, std=0.2), b + "attn_ln.weight": 1 + rnd(d), b + "attn_ln.bias": rnd(d),
                  b + "mlp_ln.weight": 1 + rnd(d), b + "mlp_ln.bias": rnd(d), b + "mlp.0.weight": rnd(4 * d, d, std=0.2),
                  b + "mlp.0.bias": rnd(4 * d), b + "mlp.2.weight": rnd(d, 4 * d, std=0.2), b + "mlp.2.bias": rnd(d)})
    save_file(w, folder / "model.safetensors")
    return folder


def reference_of(folder, dtype=torch.float32, device="cpu", **options):
    """The original model of a checkpoint, through its family's registered reference."""
    from lalm_lens.loading import open_checkpoint

    ckpt, family, family_config = open_checkpoint(folder, **options)
    return family.reference.load(ckpt, family_config, dtype, device)


def assert_bf16_agrees(ours16, ref16, ref32, factor: float = 2.0, rel: float = 0.05) -> float:
    """bfloat16: both sides round at different points, so compare each with the float32 original.
    Ours must be no further from it than `factor` x the original's own bfloat16 error, the two must
    agree within `rel` of max |logits| (verify's tolerance), and pick the same top-1 up to ties."""
    ours16, ref16, ref32 = ours16.float(), ref16.float(), ref32.float()
    scale = ref32.abs().max().item()
    ours_err, ref_err = (ours16 - ref32).abs().max().item(), (ref16 - ref32).abs().max().item()
    assert ours_err <= factor * ref_err + 1e-3 * scale, (ours_err, ref_err)
    tol = rel * scale
    assert (ours16 - ref16).abs().max().item() <= tol
    top = ours16[0, -1].argmax()
    assert ref16[0, -1, top] >= ref16[0, -1].max() - tol  # same top-1, up to ties within the tolerance
    return ours_err / scale
