"""How results write numbers: JSON that keeps NaN and ±inf, and printed values that never read "-0.00".

JSON has no NaN or infinity. Result files write NaN as `null` and ±inf as the
strings `"inf"` / `"-inf"`; `to_float` reads them back, so a result whose metric
gave NaN or ±inf loads with the same values it was saved with.
"""

from __future__ import annotations

import math
from typing import Any

INF = {"inf": math.inf, "-inf": -math.inf, "Infinity": math.inf, "-Infinity": -math.inf, "nan": math.nan}


def json_floats(x: Any) -> Any:
    """A JSON-able structure with NaN -> None and ±inf -> "inf" / "-inf" (keys and other values kept)."""
    if isinstance(x, dict):
        return {k: json_floats(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_floats(v) for v in x]
    if isinstance(x, float) and not math.isfinite(x):
        return None if math.isnan(x) else ("inf" if x > 0 else "-inf")
    return x


def to_float(x: Any) -> float:
    """A number written by `json_floats` (None -> NaN, "inf" -> inf)."""
    if x is None:
        return math.nan
    if isinstance(x, str):
        if x not in INF:
            raise ValueError(f"{x!r} is not a number")
        return INF[x]
    return float(x)


def to_floats(x: Any) -> Any:
    """`to_float` through nested lists (an array written by `json_floats`)."""
    if isinstance(x, (list, tuple)):
        return [to_floats(v) for v in x]
    return to_float(x)


def num(x: Any, spec: str = ".2f") -> str:
    """`format(x, spec)` without a negative zero: -0.001 prints as "0.00", not "-0.00"."""
    text = format(float(x), spec)
    if text.startswith("-") and math.isfinite(float(x)) and float(text) == 0:
        return text[1:]
    return text
