"""Qwen-Audio (v1) assembled from Hugging Face parts, for `verify` and the tests.

The original is remote code that no longer loads on transformers 5; this
reference computes the same thing from `transformers` modules loaded with the
checkpoint's weights: the `WhisperEncoder` conv stem and `WhisperEncoderLayer`s
(the original's blocks are Whisper's: q and v with bias, k without), run on the
mel cropped to twice the longest clip's conv length with padded positions
zeroed and masked as keys, then AvgPool(2), `ln_post`, `proj`, the begin/end
vectors around each clip, written over `<audio>`…`</audio>`; and a
`Qwen2ForCausalLM` holding the LM (same math as Qwen v1: q/k/v bias, SwiGLU,
RMSNorm, rotate-half RoPE) with `c_attn` split into q/k/v and w2 as the gate.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class ReferenceOutput:
    logits: Tensor
    hidden_states: tuple
    audio_embeds: Tensor


class QwenAudioReference(nn.Module):
    def __init__(self, encoder, proj: nn.Linear, tags: nn.Embedding, lm, start_id: int):
        super().__init__()
        self.encoder, self.proj, self.tags, self.lm = encoder, proj, tags, lm
        self.start_id, self.end_id = start_id, start_id + 1

    def encode(self, input_features: Tensor, feature_attention_mask: Tensor) -> list[Tensor]:
        enc = self.encoder
        t = (feature_attention_mask.sum(-1) - 1) // 2 + 1
        x = input_features[..., : 2 * int(t.max())].to(enc.conv1.weight.dtype)
        x = F.gelu(enc.conv2(F.gelu(enc.conv1(x)))).permute(0, 2, 1)
        x = x + enc.embed_positions.weight[: x.shape[1]]
        padded = torch.arange(x.shape[1], device=x.device)[None] >= t[:, None]
        x = x.masked_fill(padded[..., None], 0.0)
        mask = torch.zeros(padded.shape, dtype=x.dtype, device=x.device).masked_fill(padded, float("-inf"))
        mask = mask[:, None, None, :]
        for layer in enc.layers:
            out = layer(x, attention_mask=mask)
            x = out[0] if isinstance(out, tuple) else out
        x = F.avg_pool1d(x.permute(0, 2, 1), 2, 2).permute(0, 2, 1)
        x = self.proj(enc.layer_norm(x))
        n = (t - 2) // 2 + 1
        return [torch.cat([self.tags.weight[:1], x[i, : n[i]], self.tags.weight[1:]]) for i in range(x.shape[0])]

    def embeddings(self, input_ids, input_features, feature_attention_mask):
        embeds = self.lm.get_input_embeddings()(input_ids)
        audio = None
        if input_features is not None:
            audio = self.encode(input_features, feature_attention_mask)
            embeds = embeds.clone()
            starts = (input_ids == self.start_id).nonzero().tolist()
            ends = (input_ids == self.end_id).nonzero().tolist()
            for k, ((row, a), (_, b)) in enumerate(zip(starts, ends)):
                embeds[row, a : b + 1] = audio[k].to(embeds.dtype)
        return embeds, audio

    def forward(self, input_ids, input_features=None, feature_attention_mask=None, attention_mask=None, **_):
        embeds, audio = self.embeddings(input_ids, input_features, feature_attention_mask)
        out = self.lm(inputs_embeds=embeds, attention_mask=attention_mask, output_hidden_states=True)
        return ReferenceOutput(out.logits, out.hidden_states, None if audio is None else torch.cat(audio))

    @torch.no_grad()
    def generate(self, input_ids, input_features=None, feature_attention_mask=None, attention_mask=None,
                 max_new_tokens: int = 20, **kwargs):
        embeds, _ = self.embeddings(input_ids, input_features, feature_attention_mask)
        return self.lm.generate(inputs_embeds=embeds, attention_mask=attention_mask, do_sample=False,
                                max_new_tokens=max_new_tokens, **kwargs)


def load_reference(ckpt, dtype=None, device=None) -> QwenAudioReference:
    from transformers import Qwen2Config, Qwen2ForCausalLM, WhisperConfig
    from transformers.models.whisper.modeling_whisper import WhisperEncoder

    from weight_conversion.reading import read_tensors

    c = ckpt.config()
    a = c["audio"]
    dtype = dtype or torch.float32
    # One copy of the weights, in the target dtype: modules are built on the meta device and take the
    # checkpoint's tensors as their parameters (`assign=True`), never initialised randomly.
    state = {k: v.to(dtype) for path in ckpt.shards() for k, v in read_tensors(path)}
    meta = torch.device("meta")
    wcfg = WhisperConfig(d_model=a["n_state"], encoder_layers=a["n_layer"], encoder_attention_heads=a["n_head"],
                         encoder_ffn_dim=4 * a["n_state"], num_mel_bins=a["n_mels"], max_source_positions=a["n_ctx"])
    wcfg._attn_implementation = "eager"
    with meta:
        encoder = WhisperEncoder(wcfg)
    e = "transformer.audio."
    enc_state = {"conv1.weight": state[e + "conv1.weight"], "conv1.bias": state[e + "conv1.bias"],
                 "conv2.weight": state[e + "conv2.weight"], "conv2.bias": state[e + "conv2.bias"],
                 "embed_positions.weight": state[e + "positional_embedding"],
                 "layer_norm.weight": state[e + "ln_post.weight"], "layer_norm.bias": state[e + "ln_post.bias"]}
    names = {"attn.query": "self_attn.q_proj", "attn.key": "self_attn.k_proj", "attn.value": "self_attn.v_proj",
             "attn.out": "self_attn.out_proj", "attn_ln": "self_attn_layer_norm", "mlp.0": "fc1", "mlp.2": "fc2",
             "mlp_ln": "final_layer_norm"}
    for i in range(a["n_layer"]):
        for theirs, ours in names.items():
            for kind in ("weight", "bias"):
                key = f"{e}blocks.{i}.{theirs}.{kind}"
                if key in state:
                    enc_state[f"layers.{i}.{ours}.{kind}"] = state[key]
    encoder.load_state_dict(enc_state, strict=True, assign=True)
    with meta:
        proj = nn.Linear(a["n_state"], a["output_dim"])
        tags = nn.Embedding(2, a["output_dim"])
    proj.load_state_dict({"weight": state[e + "proj.weight"], "bias": state[e + "proj.bias"]}, assign=True)
    tags.load_state_dict({"weight": state[e + "audio_bos_eos_token.weight"]}, assign=True)
    heads = c["num_attention_heads"]
    lcfg = Qwen2Config(hidden_size=c["hidden_size"], num_attention_heads=heads, num_key_value_heads=heads,
                       intermediate_size=c["intermediate_size"] // 2, num_hidden_layers=c["num_hidden_layers"],
                       vocab_size=c["vocab_size"], rms_norm_eps=c["layer_norm_epsilon"],
                       rope_parameters={"rope_type": "default", "rope_theta": float(c["rotary_emb_base"])},
                       max_position_embeddings=c["seq_length"], tie_word_embeddings=False)
    with meta:
        lm = Qwen2ForCausalLM(lcfg)
    lm_state = {"model.embed_tokens.weight": state["transformer.wte.weight"], "model.norm.weight": state["transformer.ln_f.weight"],
                "lm_head.weight": state["lm_head.weight"]}
    for i in range(c["num_hidden_layers"]):
        h, m = f"transformer.h.{i}.", f"model.layers.{i}."
        for kind in ("weight", "bias"):
            q, k, v = state[h + f"attn.c_attn.{kind}"].chunk(3, dim=0)
            lm_state.update({m + f"self_attn.q_proj.{kind}": q, m + f"self_attn.k_proj.{kind}": k,
                             m + f"self_attn.v_proj.{kind}": v})
        lm_state.update({m + "self_attn.o_proj.weight": state[h + "attn.c_proj.weight"],
                         m + "mlp.gate_proj.weight": state[h + "mlp.w2.weight"],
                         m + "mlp.up_proj.weight": state[h + "mlp.w1.weight"],
                         m + "mlp.down_proj.weight": state[h + "mlp.c_proj.weight"],
                         m + "input_layernorm.weight": state[h + "ln_1.weight"],
                         m + "post_attention_layernorm.weight": state[h + "ln_2.weight"]})
    lm.load_state_dict(lm_state, strict=True, assign=True)
    lm.model.rotary_emb = type(lm.model.rotary_emb)(lcfg)  # its buffers are computed, not loaded
    ref = QwenAudioReference(encoder, proj, tags, lm, a["audio_start_id"])
    return ref.to(device=device).eval()
