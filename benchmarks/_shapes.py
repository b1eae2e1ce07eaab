"""The CPU-sized LALM the speed benchmarks share (Whisper-style encoder, 8-layer Qwen2-style LM) and its inputs."""

from __future__ import annotations

import numpy as np
import torch

from lalm_lens import BlockConfig, EncoderConfig, HookedLALM, LALMConfig, ProjectorConfig

VOCAB, D, LAYERS = 4096, 256, 8  # LAYERS: the required cases' LM depth; the audio token is the last id


def build_model(device: str, n_layers: int = LAYERS, vocab: int = VOCAB, enc_width: int = D,
                enc_layers: int = 4) -> HookedLALM:
    enc = EncoderConfig(d_model=enc_width, d_head=enc_width // 4, n_heads=4, n_layers=enc_layers, n_ctx=1500,
                        d_mlp=4 * enc_width, act_fn="gelu",
                        normalization_type="LN", positional_embedding_type="learned", causal=False, pool=2,
                        final_norm=True, n_mels=128, n_frames=3000, kind="padded", device=device)
    lm = BlockConfig(d_model=D, d_head=64, n_heads=4, n_key_value_heads=4, n_layers=n_layers, n_ctx=4096, d_mlp=4 * D,
                     d_vocab=vocab, act_fn="silu", gated_mlp=True, normalization_type="RMS",
                     positional_embedding_type="rotary", eps=1e-6, device=device)
    config = LALMConfig(family="qwen2_audio", lm=lm, encoder=enc, projector=ProjectorConfig("linear", enc_width, D),
                        audio_token_id=vocab - 1)
    return HookedLALM(config).init_weights(std=0.05, seed=0).to(device).eval()


def make_inputs(n_audio: int, n_text: int, device: str, seed: int = 0, vocab: int = VOCAB):
    from transformers import WhisperFeatureExtractor

    seconds = n_audio / 25
    rng = np.random.default_rng(seed)
    wave = (0.1 * rng.standard_normal(int(seconds * 16000))).astype(np.float32)
    fe = WhisperFeatureExtractor(feature_size=128)
    ids = torch.tensor([[vocab - 1] * n_audio + rng.integers(0, vocab - 1, n_text).tolist()])

    def inputs(w):
        f = fe(w, sampling_rate=16000, return_attention_mask=True, return_tensors="pt")
        return dict(input_ids=ids, input_features=f["input_features"], feature_attention_mask=f["attention_mask"])

    to = lambda d: {k: v.to(device) for k, v in d.items()}  # noqa: E731
    return to(inputs(wave)), to(inputs(np.zeros_like(wave)))
