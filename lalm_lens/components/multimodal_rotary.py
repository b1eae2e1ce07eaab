"""Multimodal rotary position embedding (Qwen2.5-Omni's M-RoPE), hooked.

Every position carries three position ids (time, height, width). The `d_head / 2`
rotary frequencies are cut into `mrope_section` sections (7B: [16, 24, 24]); section
i takes its angles from stream `i % 3`, and the result is duplicated (rotate-half
form), exactly as `transformers`' `Qwen2_5OmniRotaryEmbedding` recomposes them.

For audio + text the three streams are equal (`get_rope_index` numbers audio
tokens like text: `cumsum(attention_mask) - 1`, padding at 1), so M-RoPE reduces
to 1-D RoPE; `hook_positions` shows (and lets one edit) the three streams.
"""

import torch
from jaxtyping import Float, Int
from torch import Tensor
from transformer_lens.hook_points import HookPoint

from lalm_lens.components.rotary import Rotary


class MultimodalRotary(Rotary):
    """Rotary tables from `[3, batch, pos]` position ids (1-D ids `[batch, pos]` count as three equal streams)."""

    def __init__(self, d_head: int, base: float, mrope_section: list[int], scaling: dict | None = None):
        super().__init__(d_head, base, scaling)
        if sum(mrope_section) != d_head // 2:
            raise ValueError(f"mrope_section {list(mrope_section)} must sum to d_head / 2 = {d_head // 2}")
        self.mrope_section = [int(n) for n in mrope_section]
        self.hook_positions = HookPoint()  # [3, batch, pos]: time, height, width position ids

    def positions(self, n_new: int, past: int, input_ids=None, attention_mask=None, device=None) -> Tensor:
        """`[3, batch, n_new]` as `get_rope_index` gives for audio + text: `cumsum(mask) - 1` over the
        whole mask (which covers `past + n_new` keys), padding at 1; `past, past + 1, ...` without a mask."""
        if attention_mask is None:
            ids = torch.arange(past, past + n_new, device=device)[None]
        else:
            mask = attention_mask.to(device).long()
            ids = (mask.cumsum(-1) - 1).masked_fill(mask == 0, 1)[:, -n_new:]
        return ids[None].expand(3, -1, -1)

    def recompose(self, freqs: Tensor) -> Tensor:
        """`[3, batch, pos, d_head / 2]` angles -> `[batch, pos, d_head / 2]`: section i from stream `i % 3`."""
        sections = freqs.split(self.mrope_section, dim=-1)
        return torch.cat([part[i % 3] for i, part in enumerate(sections)], dim=-1)

    def cos_sin(
        self, positions: Int[Tensor, "... batch pos"], dtype: torch.dtype
    ) -> tuple[Float[Tensor, "batch pos 1 d_head"], Float[Tensor, "batch pos 1 d_head"]]:
        """Tables for `[3, batch, pos]` ids (also `[batch, pos]`, and `[4, batch, pos]` as Hugging Face's
        `generate` passes them: text positions first, then the three streams)."""
        if positions.ndim == 2:
            positions = positions[None].expand(3, -1, -1)
        elif positions.shape[0] == 4:
            positions = positions[1:]
        if positions.ndim != 3 or positions.shape[0] != 3:
            raise ValueError("multimodal RoPE takes position ids [3, batch, pos] or [batch, pos], "
                             f"got {tuple(positions.shape)}")
        positions = self.hook_positions(positions)
        freqs = positions[..., None].float() * self.inv_freq.float()  # [3, batch, pos, d_head / 2]
        freqs = self.recompose(freqs)  # [batch, pos, d_head / 2]
        emb = torch.cat((freqs, freqs), dim=-1)[:, :, None, :]
        return emb.cos().to(dtype), emb.sin().to(dtype)


class InterleavedMultimodalRotary(MultimodalRotary):
    """Qwen3-Omni's M-RoPE: the three streams interleaved frequency by frequency, not in sections.

    Frequency j takes its angle from height when `j % 3 == 1` and `j < 3 * mrope_section[1]`, from
    width when `j % 3 == 2` and `j < 3 * mrope_section[2]`, else from time (Qwen3-Omni-30B: sections
    [24, 20, 20] of 64 frequencies), as `Qwen3OmniMoeThinkerTextRotaryEmbedding` recomposes them.
    """

    def recompose(self, freqs: Tensor) -> Tensor:
        out = freqs[0].clone()
        for stream in (1, 2):
            take = slice(stream, 3 * self.mrope_section[stream], 3)
            out[..., take] = freqs[stream, ..., take]
        return out


def make_rotary(cfg) -> Rotary:
    """The LM's rotary component from its config: 1-D, sectioned or interleaved multimodal RoPE."""
    if not cfg.mrope_section:
        return Rotary(cfg.d_head, cfg.rotary_base, cfg.rope_scaling)
    cls = InterleavedMultimodalRotary if cfg.mrope_interleaved else MultimodalRotary
    return cls(cfg.d_head, cfg.rotary_base, cfg.mrope_section, cfg.rope_scaling)
