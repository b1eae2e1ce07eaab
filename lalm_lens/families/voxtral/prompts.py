"""Voxtral rows through the checkpoint's `VoxtralProcessor` (tokenisation by `mistral_common`).

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

from lalm_lens.inputs.builder import PromptBuilder, Row
from lalm_lens.inputs.spans import byte_offsets, latin, text_spans, token_ranges

CHUNK_SECONDS = 30.0


def wav_base64(wave: np.ndarray, rate: int) -> str:
    """The clip as a float32 WAV, base64-encoded (lossless, unlike 16-bit PCM)."""
    import soundfile

    buf = io.BytesIO()
    soundfile.write(buf, wave, rate, format="WAV", subtype="FLOAT")
    return base64.b64encode(buf.getvalue()).decode("ascii")


class VoxtralPrompts(PromptBuilder):
    """`prepare()` for Voxtral checkpoints (no system prompt: the tokenizer refuses one with audio)."""

    def __init__(self, processor, config):
        super().__init__(processor.tokenizer, config, processor.feature_extractor.sampling_rate, processor)
        self.tokens_per_chunk = config.encoder.n_ctx // config.projector.stack
        self.token_seconds = CHUNK_SECONDS / self.tokens_per_chunk

    def audio_tokens(self, n_samples: int) -> int:
        chunk = int(CHUNK_SECONDS * self.sampling_rate)
        return self.tokens_per_chunk * -(-n_samples // chunk)

    def build_row(self, wave: Optional[np.ndarray], prompt: str, *, answer_prefix, options: Optional[Sequence[str]],
                  system, raw: bool) -> Row:
        if raw:
            raise ValueError("raw prompts are not supported for Voxtral: the prompt is built by mistral_common")
        if system:
            raise ValueError("Voxtral's tokenizer does not accept a system prompt together with audio")
        content = [{"type": "audio", "base64": wav_base64(wave, self.sampling_rate)}] if wave is not None else []
        conv = [{"role": "user", "content": content + [{"type": "text", "text": prompt}]}]
        if answer_prefix:
            conv.append({"role": "assistant", "content": answer_prefix})
        features = {}
        if wave is not None:
            out = self.processor.apply_chat_template([conv], continue_final_message=bool(answer_prefix),
                                                     return_tensors="pt")
            ids, features = out["input_ids"][0].tolist(), {"input_features": out["input_features"]}
        else:
            encoded = self.tokenizer.apply_chat_template(conv, continue_final_message=bool(answer_prefix), tokenize=True)
            ids = list(encoded["input_ids"] if hasattr(encoded, "keys") else encoded)
        times = self.token_times(len(wave)) if wave is not None else None
        meta = {"audio_chunk": torch.tensor([int(t // CHUNK_SECONDS) for t in times])} if times else {}
        return Row(ids, self.tokenizer.decode(ids), self.spans(ids, prompt, options, answer_prefix), features, times, meta)

    def spans(self, ids: list[int], prompt: str, options, answer_prefix) -> dict:
        """Token ranges of prompt / options / answer prefix, found in the tokens' bytes."""
        inner = self.tokenizer.tokenizer.instruct_tokenizer.tokenizer
        special = set(self.tokenizer.all_special_ids)
        text, offsets = byte_offsets([b"" if i in special else inner.id_to_byte_piece(i) for i in ids])
        opts = [latin(o) for o in options] if options else None
        return token_ranges(offsets, text_spans(text, latin(prompt), opts, latin(answer_prefix)))
