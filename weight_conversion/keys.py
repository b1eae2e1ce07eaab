"""Declarative checkpoint-key tables: checkpoint key -> our parameter name(s) and a transform.

A family's converter lists `Rule`s: checkpoint key pattern (`{}` = a layer
index) -> our parameter name(s), and the transform from the checkpoint's
layout to ours (driven by the target's shape). `KeyMap.lookup(key)` answers
with one `Target`, or `DROP` for a key the model does not use; a key no rule
knows raises `KeyError`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable, Iterable, NamedTuple, Optional, Union

from torch import Tensor

Transform = Callable[[Tensor, Tensor], Tensor]  # (checkpoint tensor, our parameter) -> tensor


# ---------------------------------------------------------------- transforms (target shape drives them)
def same(w: Tensor, target: Tensor) -> Tensor:
    return w


def transpose(w: Tensor, target: Tensor) -> Tensor:
    """nn.Linear `[out, in]` -> `[in, out]`."""
    return w.T


def heads_in(w: Tensor, target: Tensor) -> Tensor:
    """q/k/v `[heads * d_head, d_model]` -> `[heads, d_model, d_head]`."""
    heads, d_model, d_head = target.shape
    return w.view(heads, d_head, d_model).transpose(1, 2)


def heads_bias(w: Tensor, target: Tensor) -> Tensor:
    """q/k/v bias `[heads * d_head]` -> `[heads, d_head]`."""
    return w.view(target.shape)


def heads_out(w: Tensor, target: Tensor) -> Tensor:
    """o_proj `[d_model, heads * d_head]` -> `[heads, d_head, d_model]`."""
    return w.T.reshape(target.shape)


def split(n: int, then: Transform = same):
    """For a fused checkpoint tensor (e.g. q|k|v rows): cut it into `n` equal parts along
    dim 0, then `then` each part for its own target."""

    def transform(w: Tensor, targets) -> tuple:
        return tuple(then(part, t) for part, t in zip(w.chunk(n, dim=0), targets))

    return transform


# ---------------------------------------------------------------- the table
@dataclass(frozen=True)
class Rule:
    pattern: str  # checkpoint key, `{}` for an integer slot
    target: Optional[str | tuple]  # our parameter(s), same slots; None drops the key; a tuple for fused keys
    transform: Transform = same

    def compile(self) -> re.Pattern:
        return re.compile("^" + re.escape(self.pattern).replace(r"\{\}", r"(\d+)") + "$")


class Target(NamedTuple):
    """Where one checkpoint key goes: our parameter (a tuple of them for a fused key, which the
    transform cuts into one tensor per name) and the transform."""

    target: Union[str, tuple[str, ...]]
    transform: Transform

    @property
    def names(self) -> tuple[str, ...]:
        return self.target if isinstance(self.target, tuple) else (self.target,)


DROP = None  # `KeyMap.lookup`'s answer for a key the model does not use


class KeyMap:
    """Checkpoint keys -> parameter names, with prefix aliases applied first."""

    def __init__(self, rules: Iterable[Rule], aliases: Optional[dict[str, str]] = None, drop_prefixes: tuple = ()):
        self.rules = [(rule, rule.compile()) for rule in rules]
        self.aliases = sorted((aliases or {}).items(), key=lambda kv: -len(kv[0]))
        self.drop_prefixes = tuple(drop_prefixes)  # keys the model does not use (e.g. a Whisper decoder)

    def canonical(self, key: str) -> str:
        for old, new in self.aliases:
            if key.startswith(old):
                return new + key[len(old):]
        return key

    def lookup(self, key: str) -> Optional[Target]:
        """The `Target` of `key`, or `DROP` for a key the model does not use (a dropped prefix, or a rule
        with no target); `KeyError` for a key no rule knows."""
        key = self.canonical(key)
        if key.startswith(self.drop_prefixes) and self.drop_prefixes:
            return DROP
        for rule, regex in self.rules:
            m = regex.match(key)
            if m:
                if rule.target is None:
                    return DROP
                filled_in = []
                for target in rule.target if isinstance(rule.target, tuple) else (rule.target,):
                    for slot in m.groups():
                        target = target.replace("{}", slot, 1)
                    filled_in.append(target)
                return Target(tuple(filled_in) if isinstance(rule.target, tuple) else filled_in[0], rule.transform)
        raise KeyError(key)
