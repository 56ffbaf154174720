"""The hub SIGKILLed at seeded random points of a 200-run workload with caps, restarted each
time: every run ends exactly once, starts once, the caps hold, nothing is left running; and
`fleetbus serve` SIGKILLed mid-session: its runs go on and a new session sees them end.

Run alone with `pytest -m faults`; CI runs the short seeded variant. FLEETBUS_FAULT_SEED
picks other kill points, FLEETBUS_FAULT_KILLS more kills.
"""

from __future__ import annotations

import functools
import json
import os
import random
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from fleetbus.bus.lock import read_pid
from fleetbus.bus.paths import Home
from fleetbus.testing.hub import cli_command, stop_hub
from fleetbus.testing.mcp_wire import WireClient
from fleetbus.testing.processes import wait_for

pytestmark = [pytest.mark.faults, pytest.mark.slow]

RUNS = 200
CAP = 4
SEED = int(os.environ.get("FLEETBUS_FAULT_SEED", "7"))
KILLS = int(os.environ.get("FLEETBUS_FAULT_KILLS", "3"))
# each start appends to the run's own ledger, notes how many runs hold a slot, then waits
AGENT = (
    'echo start >> "$LEDGER/$FLEETBUS_RUN_ID"; touch "$SLOTS/$FLEETBUS_RUN_ID"; '
    'ls "$SLOTS" | wc -l >> "$LEDGER/busy"; sleep 0.1; rm -f "$SLOTS/$FLEETBUS_RUN_ID"'
)
CONFIG = f"""\
agents:
  work:
    command: ["sh", "-c", {json.dumps(AGENT)}, "{{prompt}}"]
    prompt: arg
    env: [LEDGER, SLOTS]
    concurrency: {CAP}
dispatch:
  total_concurrency: {CAP}
"""


def start_hub(env: dict[str, str], home: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        cli_command("hub"),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    ready = wait_for(
        lambda: read_pid(Home(home).lock) == proc.pid and Home(home).socket.exists(), 30
    )
    assert ready, "the hub did not start"
    return proc


def call(env: dict[str, str], action: str, payload: Any) -> Any:
    done = subprocess.run(
        cli_command("call", action, "-"),
        input=json.dumps(payload),
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def dispatch_all(env: dict[str, str]) -> None:
    """Dispatch every run over one connection; idempotency keys make a retry after a kill
    return the same run."""
    script = (
        "import json, sys, anyio\n"
        "from fleetbus.bus.client import connect\n"
        "async def main():\n"
        "    async with connect(autostart=False) as c:\n"
        f"        for n in range({RUNS}):\n"
        "            await c.perform('runner.dispatch', {'agent': 'work', 'prompt': 'x',\n"
        "                'workspace': f'f/w/t{n}', 'idempotency_key': f'k{n}'})\n"
        "anyio.run(main)\n"
    )
    subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, timeout=300)


def completed(env: dict[str, str]) -> int:
    return int(call(env, "runner.status", {"limit": 0})["completed"])


def reached(env: dict[str, str], count: int) -> bool:
    return completed(env) >= count


def test_sigkill_at_seeded_points_loses_nothing_and_runs_nothing_twice(
    home: Path, env: dict[str, str]
) -> None:
    ledger, slots = home.parent / "ledger", home.parent / "slots"
    ledger.mkdir()
    slots.mkdir()
    config = home.parent / "fleetbus.yaml"
    config.write_text(CONFIG)
    env.update(FLEETBUS_CONFIG=str(config), LEDGER=str(ledger), SLOTS=str(slots))
    rng = random.Random(SEED)
    points = sorted(rng.sample(range(10, RUNS - 10), KILLS))
    hubs: list[subprocess.Popen[bytes]] = []
    try:
        for point in points:
            hubs.append(start_hub(env, home))
            dispatch_all(env)  # the first time it queues them all; later it is a no-op
            assert wait_for(functools.partial(reached, env, point), 120), f"stuck before {point}"
            hubs[-1].send_signal(signal.SIGKILL)
            hubs[-1].wait(10)
        hubs.append(start_hub(env, home))
        dispatch_all(env)
        done = wait_for(lambda: completed(env) == RUNS, 180)
        assert done, call(env, "runner.status", {"limit": 0})
        status = call(env, "runner.status", {"limit": RUNS})
        assert {r["status"] for r in status["runs"]} == {"completed"}
        assert len({r["run_id"] for r in status["runs"]}) == RUNS
        starts = {
            p.name: p.read_text().count("start") for p in ledger.iterdir() if p.name != "busy"
        }
        twice = {k: v for k, v in starts.items() if v != 1}
        assert len(starts) == RUNS and not twice, twice
        busiest = max(int(n) for n in (ledger / "busy").read_text().split())
        assert busiest <= CAP, f"{busiest} runs held a slot at once (cap {CAP})"
    finally:
        stop_hub(home)
        for hub in hubs:
            if hub.poll() is None:
                hub.kill()
            hub.wait(10)
    assert wait_for(lambda: not agents_of(home), 10), agents_of(home)


def agents_of(home: Path) -> list[int]:
    """Processes still running in one of the home's workspaces."""
    root = str(home / "workspaces")
    found = []
    for proc in psutil.process_iter(["cwd", "status"]):
        cwd = proc.info.get("cwd") or ""
        if proc.info.get("status") != psutil.STATUS_ZOMBIE and cwd.startswith(root):
            found.append(proc.pid)
    return found


def test_serve_killed_mid_session_leaves_runs_alone(home: Path, env: dict[str, str]) -> None:
    """`fleetbus serve` SIGKILLed while its runs work: they finish, and a new session sees
    how they ended."""
    ledger, slots = home.parent / "ledger", home.parent / "slots"
    ledger.mkdir()
    slots.mkdir()
    config = home.parent / "fleetbus.yaml"
    config.write_text(CONFIG)
    env.update(FLEETBUS_CONFIG=str(config), LEDGER=str(ledger), SLOTS=str(slots))
    serve = [sys.executable, "-m", "fleetbus.server", "serve"]
    with WireClient(serve, env) as first:
        first.open_like_claude_code()
        ids = [
            first.call_tool(
                "runner_dispatch", {"agent": "work", "prompt": "x", "workspace": f"f/s/t{n}"}
            )["result"]["structuredContent"]["run_id"]
            for n in range(12)
        ]
        first.proc.kill()
    with WireClient(serve, env) as second:
        second.open()

        def all_done() -> bool:
            reply = second.call_tool("runner_status", {"limit": 50})
            runs = reply["result"]["structuredContent"]["runs"]
            return {r["run_id"]: r["status"] for r in runs if r["run_id"] in ids} == {
                r: "completed" for r in ids
            }

        assert wait_for(all_done, 60)
    assert all(p.read_text().count("start") == 1 for p in ledger.iterdir() if p.name != "busy")
