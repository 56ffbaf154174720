"""What the benchmark scripts share: errors, the result of a ratio measured against a
baseline, logging, percentiles, JSON output and the check that a bench left no process
behind. The scripts import it as `common` (they are
run as `python tests/bench/<script>.py`, which puts this folder on sys.path)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import sys
from collections.abc import Callable, Sequence
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import psutil

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

P = TypeVar("P", bound="DataclassInstance")  # a script's Profile


class BenchError(Exception):
    """A correctness check failed: the numbers would not be comparable."""


@dataclass
class Result:
    """One benchmark row: a figure of fleetbus against its baseline, measured in one run."""

    name: str
    unit: str
    goal: str  # e.g. ">= 0.7x", "p99 <= 50ms", "info"
    baseline: float
    fleetbus: float
    ratio: float  # fleetbus / baseline, median of the per-round ratios
    met: bool | None  # None: no goal (information)
    valid: bool = True
    problems: list[str] = field(default_factory=list)
    rounds: dict[str, list[float]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def invalid(cls, name: str, unit: str, goal: str, problem: str) -> Result:
        """The row of a measurement whose correctness check failed."""
        return cls(name, unit, goal, math.nan, math.nan, math.nan, False, False, [problem])


def ratio_table(results: Sequence[Result], fmt: Callable[[float, str], str]) -> str:
    """Results as an aligned table: name, both figures (by `fmt`), ratio, goal, met?."""
    rows = [("name", "baseline", "fleetbus", "ratio", "goal", "met?")]
    for r in results:
        met = "INVALID" if not r.valid else ("-" if r.met is None else ("yes" if r.met else "NO"))
        ratio = "-" if math.isnan(r.ratio) else f"{r.ratio:.2f}x"
        rows.append((r.name, fmt(r.baseline, r.unit), fmt(r.fleetbus, r.unit), ratio, r.goal, met))
    return aligned(rows)


def parse_profile(
    doc: str | None,
    argv: list[str] | None,
    full: P,
    quick: P,
    count: str,
    count_help: str,
) -> tuple[argparse.Namespace, P]:
    """The common command line of a benchmark script (`--quick`, `--json`, `--rounds` and
    `--<count>` to override the profile's field of that name): the arguments and the
    profile to run."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts (CI smoke run)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--rounds", type=int, default=None, help="override the round count")
    parser.add_argument(f"--{count}", type=int, default=None, help=count_help)
    args = parser.parse_args(argv)
    profile = quick if args.quick else full
    for name in ("rounds", count):
        if getattr(args, name):
            profile = dataclasses.replace(profile, **{name: getattr(args, name)})
    return args, profile


def json_report(quick: bool, settings: Any, elapsed: float, results: Sequence[Any],
                **extra: Any) -> str:  # fmt: skip
    """The `--json` document of a script: profile, settings (a dataclass or a dict), the
    machine's Python and cores, the elapsed time, `extra` fields, then the results."""
    if dataclasses.is_dataclass(settings) and not isinstance(settings, type):
        settings = dataclasses.asdict(settings)
    doc = {
        "profile": "quick" if quick else "full",
        "settings": settings,
        "python": platform.python_version(),
        "cpus": os.cpu_count(),
        "elapsed_s": round(elapsed, 2),
        **extra,
        "results": [dataclasses.asdict(r) for r in results],
    }
    return json.dumps(no_nan(doc), indent=2)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def percentile(samples: list[float], q: float) -> float:
    """The `q`-th percentile (nearest rank); NaN for no samples."""
    if not samples:
        return math.nan
    ordered = sorted(samples)
    k = min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))
    return ordered[k]


def no_nan(obj: Any) -> Any:
    """NaN (no figure, or an invalid measurement) as null: JSON has no NaN."""
    if isinstance(obj, float) and math.isnan(obj):
        return None
    if isinstance(obj, dict):
        return {k: no_nan(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [no_nan(v) for v in obj]
    return obj


def leftovers(root: Path) -> list[str]:
    """Processes (zombies aside) still running with their working directory inside the
    bench's fresh temporary `root` — certainly the bench's: they are killed and listed."""
    root = root.resolve()
    found = []
    for proc in psutil.process_iter(["pid", "cwd", "cmdline", "status"]):
        cwd = proc.info.get("cwd")
        if proc.pid == os.getpid() or not cwd or proc.info.get("status") == "zombie":
            continue
        if cwd == str(root) or cwd.startswith(f"{root}/"):
            found.append(f"{proc.pid} {' '.join(proc.info.get('cmdline') or [])[:80]}")
            with suppress(psutil.Error):
                proc.kill()
    return found


def aligned(rows: Sequence[Sequence[str]]) -> str:
    """A text table: the first row a header, ruled off; the first column left-aligned, the
    others right-aligned."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(
            c.ljust(w) if i == 0 else c.rjust(w)
            for i, (c, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)
