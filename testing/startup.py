"""Which modules a `fleetbus` command loads: for the tests that keep the commands people and
agents run most fast to start (the standard library alone, no pydantic, mcp, anyio, ...)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

HEAVY = ("pydantic", "anyio", "click", "mcp", "sqlite_utils", "rich", "fleetbus.server.cli")
# `fleetbus ARGS`, writing to the file $FLEETBUS_TEST_MODULES the modules it loaded
LOADED = """
import atexit, json, os, sys
atexit.register(lambda: open(os.environ["FLEETBUS_TEST_MODULES"], "w").write(json.dumps(sorted(sys.modules))))
sys.argv[0] = "fleetbus"
from fleetbus.server.main import main
main()
"""
# the click CLI itself, whatever fastcli would take
CLICK = "import sys; sys.argv[0] = 'fleetbus'; from fleetbus.server.cli import main; main()"


def run_loaded(
    tmp_path: Path, env: dict[str, str], *args: str
) -> tuple[subprocess.CompletedProcess[str], list[str]]:
    """`fleetbus ARGS` (no stdin) and the heavy modules it loaded."""
    record = tmp_path / "modules.json"
    proc = subprocess.run(
        [sys.executable, "-c", LOADED, *args],
        env={**env, "FLEETBUS_TEST_MODULES": str(record)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    modules = json.loads(record.read_text())
    return proc, [m for m in modules if m.split(".")[0] in HEAVY or m in HEAVY]
