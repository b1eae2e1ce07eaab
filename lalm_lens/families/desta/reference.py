"""DeSTA2.5-Audio (and DeSTA2) assembled from Hugging Face parts, wired as the original code wires them.

The original (github.com/kehanlu/DeSTA2.5-Audio, `desta/models/modeling_desta25.py`)
is not in `transformers`, so `verify` and the tests compare our hooked model with
this reference: the `WhisperForConditionalGeneration` encoder run layer by layer
(no mask, no final LayerNorm, outputs tapped after the target layers), a
`transformers` `BertEncoder` Q-Former (eager attention, cross-attention on, no
mask — so bidirectional), one query set per tap, per-query softmax tap weights,
`LayerNorm -> Linear`, and `LlamaForCausalLM` fed with the token embeddings in
which the first 64 placeholder positions hold the connector output. It runs in
eval mode (the original's `from_pretrained` leaves the Q-Former's dropout on).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor, nn


@dataclass
class ReferenceOutput:
    logits: Tensor
    hidden_states: tuple
    audio_embeds: Tensor


class DestaConnector(nn.Module):
    """The original connector's modules, under the original's parameter names."""

    def __init__(self, d_encoder: int, n_heads: int, n_layers: int, n_taps: int, n_queries: int, d_lm: int):
        super().__init__()
        from transformers import BertConfig
        from transformers.models.bert.modeling_bert import BertEncoder

        config = BertConfig(num_hidden_layers=n_layers, num_attention_heads=n_heads, hidden_size=d_encoder,
                            add_cross_attention=True, is_decoder=True)
        config._attn_implementation = "eager"
        self.qformer = BertEncoder(config)
        self.layer_prompts = nn.ParameterList(nn.Parameter(torch.randn(1, n_queries, d_encoder)) for _ in range(n_taps))
        self.layer_weights = nn.Parameter(torch.zeros(n_queries, n_taps))
        self.proj = nn.Sequential(nn.LayerNorm(d_encoder), nn.Linear(d_encoder, d_lm))

    def forward(self, tapped: list[Tensor]) -> Tensor:
        outs = []
        for prompt, hidden in zip(self.layer_prompts, tapped):
            q = prompt.expand(hidden.shape[0], -1, -1)
            outs.append(self.qformer(q, encoder_hidden_states=hidden).last_hidden_state[:, : q.shape[1]])
        stacked = torch.stack(outs, dim=0).permute(1, 2, 0, 3)  # [clip, query, tap, d]
        weights = self.layer_weights.softmax(-1).unsqueeze(-1)
        return self.proj((stacked * weights).sum(dim=2))


class DestaReference(nn.Module):
    def __init__(self, whisper, llm, connector: DestaConnector, taps: tuple[int, ...], placeholder_id: int,
                 hidden_state_taps: Optional[tuple[int, ...]] = None):
        super().__init__()
        self.encoder = whisper.model.encoder
        self.llm = llm
        self.connector = connector
        self.taps = tuple(taps)
        self.placeholder_id = placeholder_id
        self.hidden_state_taps = hidden_state_taps  # DeSTA2: indices into HF `encoder_hidden_states`

    def encode(self, input_features: Tensor) -> Tensor:
        enc = self.encoder
        if self.hidden_state_taps is not None:  # DeSTA2 reads the HF encoder's hidden-state tuple
            states = enc(input_features.to(enc.conv1.weight.dtype), output_hidden_states=True).hidden_states
            return self.connector([states[i] for i in self.hidden_state_taps])
        x = input_features.to(enc.conv1.weight.dtype)
        x = nn.functional.gelu(enc.conv2(nn.functional.gelu(enc.conv1(x)))).permute(0, 2, 1)
        x = x + enc.embed_positions.weight[: x.shape[1]]
        tapped = []
        for i, layer in enumerate(enc.layers):
            out = layer(x, attention_mask=None)
            x = out[0] if isinstance(out, tuple) else out
            if i in self.taps:
                tapped.append(x)
        return self.connector(tapped)

    def embeddings(self, input_ids: Tensor, input_features: Optional[Tensor]):
        embeds = self.llm.get_input_embeddings()(input_ids)
        audio = None
        if input_features is not None:
            audio = self.encode(input_features).to(embeds.dtype)  # [clip, 64, d_lm]
            embeds = embeds.clone()
            for row in range(input_ids.shape[0]):
                start = int((input_ids[row] == self.placeholder_id).nonzero()[0])
                embeds[row, start : start + audio.shape[1]] = audio[row]
        return embeds, audio

    def forward(self, input_ids, input_features=None, attention_mask=None, **_) -> ReferenceOutput:
        embeds, audio = self.embeddings(input_ids, input_features)
        out = self.llm(inputs_embeds=embeds, attention_mask=attention_mask, output_hidden_states=True)
        return ReferenceOutput(out.logits, out.hidden_states, None if audio is None else audio.reshape(-1, audio.shape[-1]))

    @torch.no_grad()
    def generate(self, input_ids, input_features=None, attention_mask=None, max_new_tokens: int = 20, **kwargs):
        embeds, _ = self.embeddings(input_ids, input_features)
        return self.llm.generate(inputs_embeds=embeds, attention_mask=attention_mask, do_sample=False,
                                 max_new_tokens=max_new_tokens, **kwargs)


def load_reference(connector_files, src, config, dtype=None, device=None) -> DestaReference:
    """Build the reference from the three checkpoints a DeSTA model is made of (`src`: `DestaSources`)."""
    from transformers import LlamaForCausalLM, WhisperForConditionalGeneration

    from weight_conversion.reading import read_tensors

    whisper = WhisperForConditionalGeneration.from_pretrained(src.encoder_path, dtype=dtype)
    llm = LlamaForCausalLM.from_pretrained(src.llm_path, dtype=dtype)
    p = config.projector
    connector = DestaConnector(p.d_in, p.extra["n_heads"], p.extra["n_layers"], len(p.extra["taps"]),
                               p.extra["n_queries"], p.d_out)
    prefix = p.extra.get("checkpoint_prefix", "")
    state = {key[len(prefix):]: tensor for path in connector_files for key, tensor in read_tensors(path)
             if key.startswith(prefix)}
    connector.load_state_dict(state)
    ref = DestaReference(whisper, llm, connector.to(dtype or torch.float32), p.extra["taps"], config.audio_token_id,
                         p.extra.get("hidden_state_taps"))
    return ref.to(device).eval()
