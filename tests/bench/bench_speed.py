"""The speed goals side by side: the five ratios of the speed work, each measured by its
own benchmark script (which says how) against a baseline in the same run.

Run it as a script (it is not a pytest test)::

    python tests/bench/bench_speed.py           # each script's full profile (several minutes)
    python tests/bench/bench_speed.py --quick   # their quick profiles
    python tests/bench/bench_speed.py --json    # the rows as JSON on stdout

1. dispatch throughput, pipelined over one IPC connection (bench_runner): >= 0.7x
2. `fleetbus call hub.ping` wall time vs a bare Python start (bench_cli): <= 3x
3. MCP `runner_status` through the hub vs a bare `MCPServer` tool (bench_mcp): <= 1.5x
4. `perform` of a trivial validated action vs a raw pluggy hook call (bench_bus): <= 1.5x
5. IPC `perform` round trip vs a raw Unix-socket JSON echo (bench_bus): <= 1.5x

Timings are reported, never asserted; the exit status is 1 only when one of the scripts'
correctness checks fails (its row is then INVALID).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import anyio
import bench_bus
import bench_cli
import bench_mcp
import bench_runner
from common import BenchError, aligned, log, no_nan


@dataclass
class Row:
    name: str
    goal: str
    ratio: float
    met: bool | None
    valid: bool
    problems: list[str]


def row(name: str, result: Any) -> Row:
    """One of the scripts' results, as a row of this table."""
    goal = result.goal
    if not isinstance(goal, str):  # bench_bus keeps the operator apart: <= and 1.5
        goal = f"{result.goal_op} {goal:g}x"
    return Row(
        name,
        goal,
        result.ratio,
        result.met,
        bool(result.valid),
        list(result.problems),
    )


def failed(name: str, goal: str, problem: str) -> Row:
    return Row(name, goal, math.nan, False, False, [problem])


async def measure(quick: bool) -> list[Row]:
    rows: list[Row] = []
    runner_profile = bench_runner.QUICK if quick else bench_runner.FULL
    log("speed: dispatch throughput ...")
    try:
        with tempfile.TemporaryDirectory(prefix="fb-speed-") as tmp:
            found = await bench_runner.bench_throughput(runner_profile, Path(tmp))
        rows.append(row("dispatch throughput, pipelined over IPC", found[0]))
        # for information: the process recipe alone, and what the disk costs (tmpfs sides)
        rows += [row(f"  {info.name.strip()}", info) for info in found[1:]]
    except BenchError as e:
        rows.append(failed("dispatch throughput, pipelined over IPC", ">= 0.7x", str(e)))
    log("speed: fleetbus call ...")
    try:
        cli = await anyio.to_thread.run_sync(
            bench_cli.bench_call, bench_cli.QUICK if quick else bench_cli.FULL
        )
        rows.append(row("`fleetbus call hub.ping` vs a bare Python start", cli))
    except BenchError as e:
        rows.append(failed("`fleetbus call hub.ping` vs a bare Python start", "<= 3x", str(e)))
    log("speed: runner_status over MCP ...")
    try:
        mcp_rows, _ = await bench_mcp.run_benches(
            bench_mcp.QUICK if quick else bench_mcp.FULL, ["status"]
        )
        rows.append(row("MCP runner_status through the hub", mcp_rows[0]))
    except BenchError as e:
        rows.append(failed("MCP runner_status through the hub", "p50 <= 1.5x", str(e)))
    log("speed: perform and IPC ...")
    bus_profile = bench_bus.QUICK if quick else bench_bus.FULL
    for name, bench in (
        ("`perform` vs a raw pluggy hook call", bench_bus.bench_perform),
        ("IPC `perform` round trip vs a raw socket echo", bench_bus.bench_ipc),
    ):
        try:
            rows.append(row(name, await bench(bus_profile)))
        except BenchError as e:
            rows.append(failed(name, "<= 1.5x", str(e)))
    return rows


def table(rows: list[Row]) -> str:
    lines = [("name", "goal", "ratio", "met?")]
    for r in rows:
        met = "INVALID" if not r.valid else ("-" if r.met is None else "yes" if r.met else "NO")
        ratio = "-" if math.isnan(r.ratio) else f"{r.ratio:.2f}x"
        lines.append((r.name, r.goal, ratio, met))
    return aligned(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="each script's quick profile")
    parser.add_argument("--json", action="store_true", help="print the rows as JSON")
    args = parser.parse_args(argv)
    rows = anyio.run(measure, args.quick)
    if args.json:
        print(json.dumps(no_nan({"results": [asdict(r) for r in rows]}), indent=2))
    else:
        print(table(rows))
        for r in rows:
            for problem in r.problems:
                print(f"{r.name}: INVALID: {problem}")
    return 0 if all(r.valid for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
