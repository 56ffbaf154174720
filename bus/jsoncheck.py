"""What json.loads lets through but nothing downstream should see: stdlib only, so the
stdio relay checks a client's messages with the same rules as the hub's socket."""

from __future__ import annotations

import math
import re
from typing import Any

MAX_DEPTH = 100  # arrays and objects nested deeper than this are refused
_SURROGATE = re.compile("[\ud800-\udfff]")


class Rejected(ValueError):
    """The value breaks a rule; the message names where and what."""


def has_surrogate(text: str) -> bool:
    """A lone surrogate: json.loads accepts one, UTF-8 encoders and SQLite reject it late."""
    return _SURROGATE.search(text) is not None


def check_json(value: Any, where: str = "params") -> None:
    """Refuse what json.loads lets through but nothing downstream should see: a lone
    surrogate in a string or key (SQLite and encoders reject it late), NaN and infinities,
    and nesting deeper than MAX_DEPTH. Iterative: deep input cannot exhaust the stack."""
    stack: list[tuple[Any, str, int]] = [(value, where, 0)]
    while stack:
        item, path, depth = stack.pop()
        if isinstance(item, str):
            if has_surrogate(item):
                raise Rejected(f"{path}: contains a lone surrogate (not UTF-8)")
        elif isinstance(item, float):
            if not math.isfinite(item):
                raise Rejected(f"{path}: must be a finite number, not {item}")
        elif isinstance(item, dict | list):
            if depth >= MAX_DEPTH:
                raise Rejected(f"{path}: nested deeper than {MAX_DEPTH} levels")
            if isinstance(item, list):
                stack.extend((v, f"{path}[{i}]", depth + 1) for i, v in enumerate(item))
                continue
            for k, v in item.items():
                if has_surrogate(k):
                    raise Rejected(f"{path}: a key contains a lone surrogate")
                stack.append((v, f"{path}.{k}", depth + 1))


_SURROGATE = re.compile("[\ud800-\udfff]")
