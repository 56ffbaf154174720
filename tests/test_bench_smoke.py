"""The benchmark scripts run (quick mode) and their correctness checks hold; timing is
never asserted (the scripts exit 1 only when a check fails: a run lost, a message
dropped, a process left behind)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent / "bench"


@pytest.mark.slow
@pytest.mark.parametrize(
    "script",
    [
        "bench_bus.py",
        "bench_runner.py",
        "bench_mcp.py",
        "bench_assistant_loop.py",
        "bench_agentic.py",
        "bench_sync.py",
        "bench_cli.py",
        "bench_fleet.py",
    ],
)
def test_benchmark_runs_and_its_checks_hold(script: str) -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH / script), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["results"], report
    assert all(r.get("valid", True) for r in report["results"]), report["results"]
