"""The benchmark scripts run (quick mode) and report valid rows; timing is never asserted."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent / "bench"


@pytest.mark.slow
def test_bus_benchmark_runs_and_its_checks_hold() -> None:
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench_bus.py"), "--quick", "--json"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = json.loads(proc.stdout)
    assert [r["valid"] for r in report["results"]] == [True, True, True], report["results"]
    assert all(r["ratio"] > 0 for r in report["results"])
