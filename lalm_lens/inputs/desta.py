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

import torch

from lalm_lens.config import LALMConfig
from lalm_lens.inputs.audio import limit_duration, load_waveform
from lalm_lens.inputs.prepared import PreparedInput, batch_items
from lalm_lens.inputs.spans import text_spans, token_ranges

DEFAULT_SYSTEM = "Focus on the audio clips and instructions."


class DestaInputs:
    strip_transcript = True

    def __init__(self, tokenizer, feature_extractor, config: LALMConfig, encoder_path: Optional[str] = None):
        self.tokenizer = tokenizer
        self.feature_extractor = feature_extractor
        self.processor = None
        self.config = config
        self.encoder_path = encoder_path
        self.sampling_rate = feature_extractor.sampling_rate
        self.n_queries = config.projector.extra["n_queries"]
        self.locator = config.extra.get("audio_locator", "<|AUDIO|>")
        self._whisper = None

    @classmethod
    def from_paths(cls, config: LALMConfig) -> "DestaInputs":
        if cls is DestaInputs and config.extra.get("version") == 2:
            return Desta2Inputs.from_paths(config)
        from transformers import AutoTokenizer, WhisperFeatureExtractor

        tokenizer = AutoTokenizer.from_pretrained(config.extra["llm_path"])
        try:
            features = WhisperFeatureExtractor.from_pretrained(config.extra["encoder_path"])
        except OSError:  # no preprocessor_config.json: Whisper's defaults for this mel size
            features = WhisperFeatureExtractor(feature_size=config.encoder.n_mels)
        return cls(tokenizer, features, config, config.extra["encoder_path"])

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

    # ------------------------------------------------------------ prompts
    def _pieces(self, prompt: str, system: Optional[str], answer_prefix: Optional[str]) -> tuple[str, str]:
        messages = ([{"role": "system", "content": system}] if system else []) + [
            {"role": "user", "content": f"{self.locator}\n{prompt}"}]
        text = self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        text = text.replace(self.locator, f"<start_audio>{self.locator}<end_audio>")
        left, right = text.split(self.locator)
        return left, right + (answer_prefix or "")

    def _row(self, prompt: str, prefix: Optional[str], said: str, system: Optional[str], options):
        """Token ids of one item, the first audio slot, and the named spans."""
        left, right = self._pieces(prompt, system, prefix)
        head = self.tokenizer(left, add_special_tokens=False)["input_ids"]
        said_ids = self.tokenizer(said, add_special_tokens=False)["input_ids"]
        tail = self.tokenizer(right, add_special_tokens=False, return_offsets_mapping=True)
        start = len(head)
        shift = start + self.n_queries + len(said_ids)
        found = token_ranges(tail["offset_mapping"], text_spans(right, prompt, options, prefix))
        span = {k: (a + shift, b + shift) for k, (a, b) in found.items()}
        span["transcript"] = (start + self.n_queries, shift)
        return head + [self.config.audio_token_id] * self.n_queries + said_ids + tail["input_ids"], start, span

    def prepare(
        self,
        audio=None,
        prompt=None,
        *,
        answer_prefix=None,
        sampling_rate: Optional[int] = None,
        options: Optional[Sequence[str]] = None,
        system: Optional[str] = DEFAULT_SYSTEM,
        transcript=None,
        raw: bool = False,
    ) -> PreparedInput:
        if audio is None:
            raise ValueError("DeSTA's prepare() needs audio")
        if raw:
            raise ValueError("raw prompts are not supported for DeSTA: the prompt is built around the audio slots")
        audios, prompts, prefixes = batch_items(audio, prompt, answer_prefix)
        transcripts = list(transcript) if isinstance(transcript, (list, tuple)) else [transcript] * len(prompts)
        waves = [limit_duration(load_waveform(a, sampling_rate, self.sampling_rate), self.sampling_rate, 30.0, "DeSTA")
                 for a in audios]
        transcripts = [t if t is not None else self.transcribe(w) for t, w in zip(transcripts, waves)]
        rows, spans, starts = [], [], []
        for text, prefix, said in zip(prompts, prefixes, transcripts):
            row, start, span = self._row(text, prefix, said, system, options)
            rows.append(row), spans.append(span), starts.append(start)
        width = max(len(r) for r in rows)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        ids = torch.full((len(rows), width), pad, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for i, row in enumerate(rows):  # left padding, as the original
            ids[i, width - len(row):] = torch.tensor(row)
            mask[i, width - len(row):] = 1
            spans[i] = {k: (a + width - len(row), b + width - len(row)) for k, (a, b) in spans[i].items()}
        feats = self.feature_extractor(waves, sampling_rate=self.sampling_rate, return_tensors="pt").input_features
        positions = [torch.arange(s + width - len(r), s + width - len(r) + self.n_queries) for s, r in zip(starts, rows)]
        return PreparedInput(
            tensors={"input_ids": ids, "attention_mask": mask, "input_features": feats},
            waveforms=waves,
            sampling_rate=self.sampling_rate,
            texts=[self.tokenizer.decode(r) for r in rows],
            audio_positions=positions,
            str_tokens=[self.tokenizer.convert_ids_to_tokens(row.tolist()) for row in ids],
            spans=spans,
            prepare_kwargs=dict(prompt=prompt, answer_prefix=answer_prefix, options=options, system=system,
                                transcript=transcripts if isinstance(prompt, (list, tuple)) else transcripts[0]),
            meta={"family": self.config.family, "options": list(options) if options else None,
                  "transcripts": transcripts},
        )


class Desta2Inputs(DestaInputs):
    """DeSTA2's layout: an `audio` turn whose text (the file path in the original) gives
    way to the transcript, and the 64 audio vectors inserted at the token index of that
    turn's text as counted without BOS — with the tokenizer's own BOS added on top of
    the template's, as the original does, so they land one token early."""

    strip_transcript = False
    marker = "\u0000AUDIO\u0000"

    def _row(self, prompt: str, prefix: Optional[str], said: str, system: Optional[str], options):
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
        return ids[:at] + [self.config.audio_token_id] * self.n_queries + ids[at:], at, shifted
