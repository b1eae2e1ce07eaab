"""Name the positions of a prepared input: audio, transcript, prompt parts, final token.

Groups (each position has exactly one):
- `audio`: positions filled with audio vectors;
- `transcript`: the transcription tokens placed after them (DeSTA);
- `early_prompt`: the question before the option list (the whole question if no options);
- `object`: the option list inside the question (from `options=[...]`);
- `late_prompt`: the question after the option list, the chat markup after it and
  the answer prefix — everything between the question and the final token;
- `final`: the last position (where the answer is read);
- `template`: the rest (system prompt, role markers before the question).
Special tokens of the tokenizer are flagged separately (`special_positions`).
"""

from __future__ import annotations

GROUP_ORDER = ("template", "audio", "transcript", "early_prompt", "object", "late_prompt", "final")


def token_groups(inp, row: int = 0) -> list[str]:
    """The group name of every position of row `row` of a `PreparedInput`."""
    n = inp.input_ids.shape[1]
    groups = ["template"] * n
    spans = inp.spans[row] if inp.spans else {}
    prompt = spans.get("prompt")
    if prompt:
        a, b = prompt
        options = spans.get("options")
        if options:
            for i in range(a, options[0]):
                groups[i] = "early_prompt"
            for i in range(*options):
                groups[i] = "object"
            for i in range(options[1], n):
                groups[i] = "late_prompt"
        else:
            for i in range(a, b):
                groups[i] = "early_prompt"
            for i in range(b, n):
                groups[i] = "late_prompt"
    elif "answer_prefix" in spans:
        for i in range(*spans["answer_prefix"]):
            groups[i] = "late_prompt"
    if "transcript" in spans:
        for i in range(*spans["transcript"]):
            groups[i] = "transcript"
    for i in inp.audio_positions[row].tolist():
        groups[i] = "audio"
    mask = inp.tensors.get("attention_mask")
    last = int(mask[row].nonzero().max()) if mask is not None else n - 1
    groups[last] = "final"
    return groups


def special_positions(inp, tokenizer, row: int = 0) -> list[int]:
    """Positions holding the tokenizer's special tokens (chat markup, audio markers)."""
    if tokenizer is None:
        return []
    special = set(getattr(tokenizer, "all_special_ids", []) or [])
    return [i for i, t in enumerate(inp.input_ids[row].tolist()) if t in special]


def non_audio_positions(groups: list[str]) -> list[int]:
    return [i for i, g in enumerate(groups) if g != "audio"]


def final_position(inp, row: int = 0) -> int:
    mask = inp.get("attention_mask") if hasattr(inp, "get") else None
    if mask is None:
        return inp["input_ids"].shape[1] - 1
    return int(mask[row].nonzero().max())
