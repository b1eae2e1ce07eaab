"""Splice SAEs into a HookedLALM at any hook point (audio encoder, `hook_audio_embeds`, LM).

The spliced hook point is replaced by an `SAESplice`, itself a HookPoint: hooks
on the original name still fire, on what flows on (the SAE's output). The
SAE's own hook points hang under the spliced hook's path with SAELens's names:

    blocks.1.hook_resid_post.hook_sae_input / hook_sae_acts_pre / hook_sae_acts_post /
        hook_sae_recons / hook_sae_error / hook_sae_output

so `run_with_cache` and `run_with_hooks` see the features. A transcoder
(`hook_name_out`) records its input at `hook_name` and writes at
`hook_name_out`, where its hook points hang. With `use_error_term` (default)
the model's numbers are unchanged; without it the reconstruction replaces the
activation. The SAE is a position-wise function, so every trace engine
(the fast one's partial suffixes included) computes the spliced model exactly.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Optional

from torch import Tensor
from transformer_lens.hook_points import HookPoint

from lalm_lens.features.sae import SAE

SAE_HOOKS = ("hook_sae_input", "hook_sae_acts_pre", "hook_sae_acts_post", "hook_sae_recons", "hook_sae_error",
             "hook_sae_output")


class TranscoderInput(HookPoint):
    """Passes its input on unchanged and keeps it for the transcoder's output splice."""

    def __init__(self):
        super().__init__()
        self.last: Optional[Tensor] = None

    def forward(self, x: Tensor) -> Tensor:
        self.last = x
        return x


class SAESplice(HookPoint):
    """A hook point that runs an SAE; the SAE's hook points are registered first so they keep short names."""

    def __init__(self, sae: SAE, source: Optional[TranscoderInput] = None):
        super().__init__()
        for name in SAE_HOOKS:  # named under this splice (named_modules keeps the first path of a module)
            self.add_module(name, getattr(sae, name))
        self.sae = sae
        self.__dict__["source"] = source  # not a child: its name is the input hook's

    def forward(self, x: Tensor) -> Tensor:
        if self.source is None:
            return self.sae(x)
        if self.source.last is None:
            raise RuntimeError(f"transcoder at {self.name}: its input hook {self.sae.cfg.hook_name} did not run first")
        x_in, self.source.last = self.source.last, None
        return self.sae(x_in, target=x)


class SpliceMixin:
    """`add_sae`, `reset_saes` and `saes(...)` for HookedLALM."""

    def add_sae(self, sae: SAE, hook_name: Optional[str] = None, use_error_term: Optional[bool] = None) -> SAE:
        """Splice `sae` at `hook_name` (default: its config's); a transcoder also at its `hook_name_out`."""
        name = hook_name or sae.cfg.hook_name
        if name is None:
            raise ValueError("add_sae: the SAE's config names no hook; pass hook_name='blocks.L.hook_resid_post' (or any hook)")
        if use_error_term is not None:
            sae.use_error_term = use_error_term
        spliced = self.__dict__.setdefault("_spliced", {})
        out = sae.cfg.hook_name_out if sae.cfg.is_transcoder else None
        for n in (name, out):
            if n is None:
                continue
            if n in spliced:
                raise ValueError(f"add_sae: {n} already has an SAE; call model.reset_saes() first")
            if n not in self.hook_dict:
                raise ValueError(f"add_sae: no hook point {n!r} in this model; see model.hook_dict for the names")
        if out is None:
            self._replace(name, SAESplice(sae))
        else:
            source = TranscoderInput()
            self._replace(name, source)
            self._replace(out, SAESplice(sae, source))
        self.setup()
        return sae

    def reset_saes(self) -> None:
        """Remove every spliced SAE, putting the original hook points (with their hooks) back."""
        self._put_back(self.__dict__.get("_spliced", {}), keep={})

    @contextmanager
    def saes(self, saes: Iterable[SAE] = (), use_error_term: Optional[bool] = None):
        """`with model.saes([sae, ...]):` splices them for the block and removes them after (each SAE's
        `use_error_term` is put back as it was)."""
        before = dict(self.__dict__.get("_spliced", {}))
        saes = list(saes)
        error_terms = [sae.use_error_term for sae in saes]
        try:
            for sae in saes:
                self.add_sae(sae, use_error_term=use_error_term)
            yield self
        finally:
            added = {n: m for n, m in self.__dict__.get("_spliced", {}).items() if n not in before}
            self._put_back(added, keep=before)
            for sae, term in zip(saes, error_terms):
                sae.use_error_term = term

    def sae_hook(self, sae: SAE) -> str:
        """Where `sae` is spliced (the path its hook points hang under)."""
        for name, module in self.hook_dict.items():
            if isinstance(module, SAESplice) and module.sae is sae:
                return name
        raise ValueError("this SAE is not spliced; splice it first: model.add_sae(sae) or `with model.saes([sae]):`")

    def _replace(self, name: str, new: HookPoint) -> None:
        parent, _, attr = name.rpartition(".")
        module = self.get_submodule(parent)
        self.__dict__["_spliced"][name] = getattr(module, attr)
        setattr(module, attr, new)

    def _put_back(self, originals: dict, keep: dict) -> None:
        for name, original in reversed(list(originals.items())):
            parent, _, attr = name.rpartition(".")
            setattr(self.get_submodule(parent), attr, original)
        self.__dict__["_spliced"] = dict(keep)
        self.setup()
