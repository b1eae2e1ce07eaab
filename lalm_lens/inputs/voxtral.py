"""Voxtral inputs through the checkpoint's `VoxtralProcessor` (tokenisation by `mistral_common`).

`<s>[INST][BEGIN_AUDIO][AUDIO]x375k{prompt}[/INST]{answer_prefix}`: the waveform is
handed to the processor as an exact (float WAV) clip at 16 kHz; it pads the audio
to a multiple of 30 s, computes the mel over the whole signal and splits it into
3000-frame chunks (375 audio tokens each). `meta["audio_chunk"]` and
`meta["audio_seconds"]` give each audio token's chunk and start time.
"""

from __future__ import annotations

import base64
import io
from typing import Optional, Sequence

import numpy as np
import torch

from lalm_lens.config import LALMConfig
from lalm_lens.inputs.audio import load_waveform
from lalm_lens.inputs.prepared import PreparedInput, batch_items
from lalm_lens.inputs.spans import text_spans, token_ranges

CHUNK_SECONDS = 30.0


def wav_base64(wave: np.ndarray, rate: int) -> str:
    """The clip as a float32 WAV, base64-encoded (lossless, unlike 16-bit PCM)."""
    import soundfile

    buf = io.BytesIO()
    soundfile.write(buf, wave, rate, format="WAV", subtype="FLOAT")
    return base64.b64encode(buf.getvalue()).decode("ascii")


class VoxtralInputs:
    """`prepare()` for Voxtral checkpoints."""

    def __init__(self, processor, config: LALMConfig):
        self.processor = processor
        self.tokenizer = processor.tokenizer
        self.config = config
        self.sampling_rate = processor.feature_extractor.sampling_rate
        self.tokens_per_chunk = config.encoder.n_ctx // config.projector.stack

    def _byte_pieces(self, ids: list[int]) -> list[bytes]:
        """Each token's bytes (special tokens contribute none), for locating text spans."""
        inner = self.tokenizer.tokenizer.instruct_tokenizer.tokenizer
        special = set(self.tokenizer.all_special_ids)
        return [b"" if i in special else inner.id_to_byte_piece(i) for i in ids]

    def prepare(
        self,
        audio=None,
        prompt=None,
        *,
        answer_prefix=None,
        sampling_rate: Optional[int] = None,
        options: Optional[Sequence[str]] = None,
        system: Optional[str] = None,
        raw: bool = False,
    ) -> PreparedInput:
        if raw:
            raise ValueError("raw prompts are not supported for Voxtral: the prompt is built by mistral_common")
        if system:
            raise ValueError("Voxtral's tokenizer does not accept a system prompt together with audio")
        audios, prompts, prefixes = batch_items(audio, prompt, answer_prefix)
        waves = [load_waveform(a, sampling_rate, self.sampling_rate) for a in audios]
        conversations = []
        for i, (text, prefix) in enumerate(zip(prompts, prefixes)):
            content = ([{"type": "audio", "base64": wav_base64(waves[i], self.sampling_rate)}] if waves else [])
            conv = [{"role": "user", "content": content + [{"type": "text", "text": text}]}]
            if prefix:
                conv.append({"role": "assistant", "content": prefix})
            conversations.append(conv)
        continue_final = any(bool(p) for p in prefixes)
        if continue_final and not all(bool(p) for p in prefixes):
            raise ValueError("give an answer prefix for every prompt of a batch, or for none")
        if waves:
            out = self.processor.apply_chat_template(conversations, continue_final_message=continue_final,
                                                     return_tensors="pt")
        else:
            encoded = [self.tokenizer.apply_chat_template(c, continue_final_message=continue_final, tokenize=True)
                       for c in conversations]
            ids = [list(e["input_ids"] if hasattr(e, "keys") else e) for e in encoded]
            out = self.tokenizer.pad({"input_ids": ids}, return_tensors="pt")
        tensors = {k: out[k] for k in ("input_ids", "attention_mask", "input_features") if k in out}
        ids = tensors["input_ids"]
        audio_id = self.config.audio_token_id
        positions = [(row == audio_id).nonzero()[:, 0] for row in ids]
        spans = [self._spans(row, p, options, a) for row, p, a in zip(ids, prompts, prefixes)]
        order = [torch.arange(len(p)) for p in positions]
        return PreparedInput(
            tensors=tensors,
            waveforms=waves or [None] * len(prompts),
            sampling_rate=self.sampling_rate,
            texts=[self.tokenizer.decode(row[row != self.tokenizer.pad_token_id].tolist()) for row in ids],
            audio_positions=positions,
            str_tokens=[self.tokenizer.convert_ids_to_tokens(row.tolist()) for row in ids],
            spans=spans,
            prepare_kwargs=dict(prompt=prompt, answer_prefix=answer_prefix, options=options),
            meta={
                "family": "voxtral",
                "options": list(options) if options else None,
                "audio_chunk": [k // self.tokens_per_chunk for k in order],
                "audio_seconds": [(k % self.tokens_per_chunk) * CHUNK_SECONDS / self.tokens_per_chunk
                                  + CHUNK_SECONDS * (k // self.tokens_per_chunk) for k in order],
            },
        )

    def _spans(self, row: torch.Tensor, prompt: str, options, answer_prefix) -> dict:
        """Token ranges of prompt / options / answer prefix, found in the tokens' bytes."""
        pieces = self._byte_pieces(row.tolist())
        offsets, at = [], 0
        for piece in pieces:
            offsets.append((at, at + len(piece)))
            at += len(piece)
        as_text = lambda s: s.encode("utf-8").decode("latin-1") if s else s  # noqa: E731  (1 char = 1 byte)
        text = b"".join(pieces).decode("latin-1")
        opts = [as_text(o) for o in options] if options else None
        return token_ranges(offsets, text_spans(text, as_text(prompt), opts, as_text(answer_prefix)))
