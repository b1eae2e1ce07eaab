"""DeSTA2.5 inputs: the Llama-3.1 chat template, 64 audio slots, then the transcript as text.

As the original builds it: the user turn holds the audio locator (`<|AUDIO|>`),
which becomes `<start_audio><|AUDIO|><end_audio>` (plain text), and `<|AUDIO|>`
becomes 64 placeholder tokens (filled with the connector's vectors) followed by
the transcription's tokens (their ordinary embeddings). Positions record
`spans["transcript"]`, a token group of its own for tracing.

Transcripts: pass `transcript=`; otherwise greedy Whisper decoding from the
same Whisper checkpoint (`WhisperForConditionalGeneration.generate`, at most 128
tokens). The original first runs a voice-activity detector and uses " " when it
finds no speech; that step is not reproduced here — pass `transcript=" "` for
non-speech audio to match it.
"""

from __future__ import annotations

from typing import Optional, Sequence

import numpy as np
import torch

from lalm_lens.inputs.builder import PromptBuilder, Row
from lalm_lens.inputs.spans import text_spans, token_ranges

DEFAULT_SYSTEM = "Focus on the audio clips and instructions."


class DestaPrompts(PromptBuilder):
    """DeSTA2.5's rows: 64 audio slots, then the transcript's tokens, inside the Llama-3.1 template."""

    per_item = ("transcript",)
    time_aligned = False  # the 64 vectors are Q-Former queries over the whole clip
    strip_transcript = True

    def __init__(self, tokenizer, feature_extractor, config, encoder_path: Optional[str] = None):
        super().__init__(tokenizer, config, feature_extractor.sampling_rate)
        self.feature_extractor = feature_extractor
        self.encoder_path = encoder_path
        self.n_queries = config.projector.extra["n_queries"]
        self.locator = config.extra.get("audio_locator", "<|AUDIO|>")
        self._whisper = None

    @classmethod
    def from_config(cls, config) -> "DestaPrompts":
        from transformers import AutoTokenizer, WhisperFeatureExtractor

        tokenizer = AutoTokenizer.from_pretrained(config.extra["llm_path"])
        try:
            features = WhisperFeatureExtractor.from_pretrained(config.extra["encoder_path"])
        except OSError:  # no preprocessor_config.json: Whisper's defaults for this mel size
            features = WhisperFeatureExtractor(feature_size=config.encoder.n_mels)
        return cls(tokenizer, features, config, config.extra["encoder_path"])

    padding_side = "left"  # as the original batches

    def audio_tokens(self, n_samples: int) -> int:
        return self.n_queries if n_samples > 0 else 0

    # ------------------------------------------------------------ transcription
    def transcribe(self, wave) -> str:
        """Greedy Whisper transcription with the DeSTA model's own Whisper checkpoint."""
        from transformers import AutoTokenizer, WhisperForConditionalGeneration

        if self._whisper is None:
            try:
                decoder_tokenizer = AutoTokenizer.from_pretrained(self.encoder_path)
            except (OSError, ValueError) as err:
                raise RuntimeError(f"no Whisper tokenizer in {self.encoder_path} to transcribe with; pass transcript=") from err
            self._whisper = (WhisperForConditionalGeneration.from_pretrained(self.encoder_path).eval(), decoder_tokenizer)
        whisper, tok = self._whisper
        feats = self.feature_extractor(wave, sampling_rate=self.sampling_rate, return_tensors="pt").input_features
        with torch.no_grad():
            ids = whisper.generate(feats.to(whisper.dtype), max_new_tokens=128)
        text = tok.batch_decode(ids, skip_special_tokens=True)[0]
        return text.strip() if self.strip_transcript else text

    # ------------------------------------------------------------ rows
    def build_row(self, wave: Optional[np.ndarray], prompt: str, *, answer_prefix, options: Optional[Sequence[str]],
                  system, raw: bool, transcript: Optional[str] = None) -> Row:
        if wave is None:
            raise ValueError("DeSTA's prepare() needs audio")
        if raw:
            raise ValueError("raw prompts are not supported for DeSTA: the prompt is built around the audio slots")
        said = transcript if transcript is not None else self.transcribe(wave)
        system = DEFAULT_SYSTEM if system is None else system
        ids, spans = self.layout(prompt, answer_prefix, said, system, options)
        feats = self.feature_extractor([wave], sampling_rate=self.sampling_rate, return_tensors="pt").input_features
        return Row(ids, self.tokenizer.decode(ids), spans, {"input_features": feats}, meta={"transcript": said})

    def layout(self, prompt: str, prefix: Optional[str], said: str, system: Optional[str], options):
        """Token ids of one item (64 slots, then the transcript) and its named spans."""
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": f"{self.locator}\n{prompt}"}]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        left, right = text.replace(self.locator, f"<start_audio>{self.locator}<end_audio>").split(self.locator)
        right += prefix or ""
        head = self.tokenizer(left, add_special_tokens=False)["input_ids"]
        said_ids = self.tokenizer(said, add_special_tokens=False)["input_ids"]
        tail = self.tokenizer(right, add_special_tokens=False, return_offsets_mapping=True)
        start = len(head)
        shift = start + self.n_queries + len(said_ids)
        found = token_ranges(tail["offset_mapping"], text_spans(right, prompt, options, prefix))
        spans = {k: (a + shift, b + shift) for k, (a, b) in found.items()}
        spans["transcript"] = (start + self.n_queries, shift)
        return head + [self.config.audio_token_id] * self.n_queries + said_ids + tail["input_ids"], spans


class Desta2Prompts(DestaPrompts):
    """DeSTA2's layout: an `audio` turn whose text (the file path in the original) gives
    way to the transcript, and the 64 audio vectors inserted at the token index of that
    turn's text as counted without BOS — with the tokenizer's own BOS added on top of
    the template's, as the original does, so they land one token early."""

    strip_transcript = False
    marker = "\u0000AUDIO\u0000"

    def layout(self, prompt: str, prefix: Optional[str], said: str, system: Optional[str], options):
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "audio", "content": self.marker}, {"role": "user", "content": prompt}]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) + (prefix or "")
        left, right = text.split(self.marker)
        at = len(self.tokenizer.tokenize(left))
        full = left + said + right
        enc = self.tokenizer(full, return_offsets_mapping=True)
        spans = text_spans(full, prompt, options, prefix)
        spans["transcript"] = (len(left), len(left) + len(said))
        found = token_ranges(enc["offset_mapping"], {k: v for k, v in spans.items() if v[1] > v[0]})
        shifted = {k: (a + (self.n_queries if a >= at else 0), b + self.n_queries) for k, (a, b) in found.items()}
        ids = enc["input_ids"]
        return ids[:at] + [self.config.audio_token_id] * self.n_queries + ids[at:], shifted
