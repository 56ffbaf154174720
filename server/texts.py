"""Text for people: control characters stripped, one-liners, relative times ("2m ago",
"running 4m12s"), tables fitted to a terminal but never cut when stdout is a pipe. Stdlib only.
"""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Mapping, Sequence
from typing import Any

MIN_CELL = 12  # a column fitted to the terminal keeps at least this many characters
_CONTROL = re.compile(  # escape sequences (CSI, OSC), then any other control character
    r"\x1b\[[0-?]*[ -/]*[@-~]|\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?|[\x00-\x08\x0b-\x1f\x7f]"
)


# -- text helpers ------------------------------------------------------------------------------
def clean(text: object) -> str:
    """`text` without escape sequences or control characters (newlines and tabs stay):
    what agents write must not steer the terminal."""
    return _CONTROL.sub("", str(text))


def one_line(text: object) -> str:
    return " ".join(clean(text).split())


def terminal_width() -> int | None:
    """The terminal's width when stdout is one; None when it is not (then nothing is cut)."""
    try:
        if sys.stdout is None or not sys.stdout.isatty():
            return None
    except (AttributeError, ValueError):
        return None
    columns = os.environ.get("COLUMNS", "")
    if columns.isdigit() and int(columns) > 0:
        return int(columns)
    try:
        return os.get_terminal_size(sys.stdout.fileno()).columns
    except (OSError, ValueError):
        return 80


def fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[: max(width - 1, 0)] + "…"


def table(
    header: Sequence[str],
    rows: Sequence[Sequence[str]],
    width: int | None,
    flexible: Sequence[int] = (),
) -> list[str]:
    """Aligned columns; a column empty in every row is left out. With a terminal `width`,
    the `flexible` columns (in that order) give up characters, cut with "…", until the
    table fits (a line still too wide is cut at the edge); without one nothing is cut."""
    keep = [i for i in range(len(header)) if not rows or any(r[i] for r in rows)]
    flexible = [keep.index(i) for i in flexible if i in keep]
    cells = [[row[i] for i in keep] for row in [header, *rows]]
    header = cells[0]
    widths = [max(len(row[i]) for row in cells) for i in range(len(header))]
    if width is not None:
        excess = sum(widths) + 2 * (len(widths) - 1) - width
        for i in flexible:
            give = min(excess, widths[i] - max(len(header[i]), MIN_CELL))
            if give > 0:
                widths[i] -= give
                excess -= give
    lines = []
    for row in cells:
        parts = [fit(cell, widths[i]) if width is not None else cell for i, cell in enumerate(row)]
        line = "  ".join(p.ljust(widths[i]) for i, p in enumerate(parts)).rstrip()
        lines.append(line if width is None else fit(line, width))
    return lines


def wrapped(
    label: str, text: str, width: int | None, indent: str = "    ", align: int = 0
) -> list[str]:
    """`label: text` under a row (the label padded to `align`), each line of `text` kept;
    wrapped to a terminal's width."""
    lines = clean(text).strip().splitlines() or [""]
    first = f"{indent}{(label + ':').ljust(align)} "
    pad = " " * len(first)
    out = [(first if i == 0 else pad) + line.rstrip() for i, line in enumerate(lines)]
    if width is None:
        return out
    import textwrap

    result = []
    for i, line in enumerate(lines):
        result += textwrap.wrap(
            line,
            width=max(width, len(first) + MIN_CELL),
            initial_indent=first if i == 0 else pad,
            subsequent_indent=pad,
        ) or [(first if i == 0 else pad).rstrip()]
    return result


def span(seconds: float) -> str:
    """A duration: 12s, 4m12s, 2h05m, 3d04h."""
    s = max(0, int(seconds))
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def ago(seconds: float) -> str:
    """How long ago, coarsely: 12s ago, 2m ago, 3h ago, 2d ago."""
    s = max(0, int(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit} ago"
    return f"{s}s ago"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def tokens_of(usage: Mapping[str, Any] | None) -> int | None:
    """Total tokens of a run's usage: as reported, else input plus output."""
    if not usage:
        return None
    if isinstance(usage.get("total_tokens"), int):
        return int(usage["total_tokens"])
    parts = [usage.get(k) for k in ("input_tokens", "output_tokens")]
    if all(p is None for p in parts):
        return None
    return sum(int(p) for p in parts if isinstance(p, int | float))


def money(cost: Any) -> str:
    if not isinstance(cost, int | float):
        return ""
    return f"${cost:.2f}" if cost >= 1 else f"${cost:.4f}"
