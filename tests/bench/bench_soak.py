"""Soak: a deep queue, many connected sessions and a steady stream of work, for a minute.

Run it as a script (it is not a pytest test)::

    python tests/bench/bench_soak.py              # 10,000 queued, 32 sessions, 60 s
    python tests/bench/bench_soak.py --quick      # 500 queued, 8 sessions, 10 s
    python tests/bench/bench_soak.py --run-s 0    # flat out: agents that exit at once
    python tests/bench/bench_soak.py --json

A real hub, `fleetbus serve` sessions on the wire (`fleetbus.testing.mcp_wire`). The runner
is frozen while the queue is filled over one session (pipelined `runner_dispatch` calls of
`sleep`: each run lasts `--run-s` seconds, 0.5 by default, 8 at a time: a steady 16
completions a second, a busy fleet of real agents; `--run-s 0` runs flat out, as many
process starts and ends a second as the machine allows), the other sessions connect, and
`runner_status` is timed idle; then the runner is unfrozen and, for the soak's length, one
more run is dispatched for each that ends, while `runner_status` is timed under load.
Reported: the hub's RSS at the start and the end, the p99 of `runner_status` under load
against idle (goal <= 2x) from the session that dispatches (it also receives every run's
channel events) and from another session (the `other_` figures: what a second assistant sees
while the fleet is busy), and the hub's subscriptions and tasks (`hub.status`) at the start
and the end (they must not grow). Timings are reported, never asserted; the exit status is 1
only when a check fails (a dispatch refused, a process left running).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
from common import BenchError, leftovers, log, no_nan, percentile

from fleetbus.bus.lock import read_pid
from fleetbus.bus.paths import Home
from fleetbus.testing.hub import cli_command, stop_hub
from fleetbus.testing.mcp_wire import WireClient

SERVE = [sys.executable, "-m", "fleetbus.server", "serve"]
CONFIG = """\
agents:
  noop:
    command: ["sleep", "{prompt}"]
    prompt: arg
    concurrency: 8
dispatch:
  total_concurrency: 8
"""


def timed_status(client: WireClient, n: int) -> list[float]:
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        reply = client.call_tool("runner_status", {"limit": 5})
        out.append((time.perf_counter() - t0) * 1000)
        if "result" not in reply:
            raise BenchError(f"runner_status failed: {reply}")
    return out


def dispatch(client: WireClient, count: int, start: int, run_s: float) -> None:
    ids = [
        client.request(
            "tools/call",
            {
                "name": "runner_dispatch",
                "arguments": {
                    "agent": "noop",
                    "prompt": f"{run_s:g}",
                    "workspace": f"s/q/t{start + n}",
                },
            },
        )
        for n in range(count)
    ]
    for req in ids:
        reply = client.response(req, 300)
        if reply.get("result", {}).get("isError", True):
            raise BenchError(f"dispatch failed: {reply}")


def hub_status(env: dict[str, str]) -> dict[str, Any]:
    done = subprocess.run(
        cli_command("call", "hub.status"), env=env, capture_output=True, text=True, timeout=60
    )
    if done.returncode != 0:
        raise BenchError(f"hub.status failed: {done.stderr}")
    return dict(json.loads(done.stdout))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--run-s", type=float, default=0.5, help="how long each run lasts")
    args = parser.parse_args()
    queued, sessions, seconds = (500, 8, 10.0) if args.quick else (10_000, 32, 60.0)
    with tempfile.TemporaryDirectory(prefix="fb-soak-") as tmp:
        root = Path(tmp)
        (root / "fleetbus.yaml").write_text(CONFIG)
        home = root / "home"
        env = {
            **{k: v for k, v in os.environ.items() if not k.startswith("FLEETBUS_")},
            "FLEETBUS_HOME": str(home),
            "FLEETBUS_CONFIG": str(root / "fleetbus.yaml"),
            "XDG_CONFIG_HOME": str(root / "xdg"),
            "FLEETBUS_FROZEN": "1",
        }
        clients: list[WireClient] = []
        try:
            main_session = WireClient(SERVE, env, cwd=root)
            clients.append(main_session)
            main_session.open("soak")
            log(f"queueing {queued} runs")
            dispatch(main_session, queued, 0, args.run_s)
            for _ in range(sessions - 1):
                c = WireClient(SERVE, env, cwd=root)
                clients.append(c)
                c.open("soak")
                c.call_tool("runner_status", {"limit": 1})  # the hub's side of it opens
            hub = psutil.Process(read_pid(Home(home).lock) or 0)
            rss_start = hub.memory_info().rss / 2**20
            status = hub_status(env)
            subs_start, tasks_start = len(status["subscribers"]), status["tasks"]
            observer = clients[1] if len(clients) > 1 else main_session
            idle = timed_status(main_session, 500)  # as many as p99 needs to mean something
            idle_other = timed_status(observer, 500)
            log(f"soaking {seconds:g}s")
            main_session.call_tool("runner_start", {})
            load: list[float] = []
            load_other: list[float] = []
            dispatched = queued
            deadline = time.monotonic() + seconds
            while time.monotonic() < deadline:
                load += timed_status(main_session, 5)
                load_other += timed_status(observer, 5)
                done = main_session.call_tool("runner_status", {"limit": 0})
                ended = done["result"]["structuredContent"]["completed"]
                top_up = max(0, min(200, ended + queued - dispatched))
                if top_up:
                    dispatch(main_session, top_up, dispatched, args.run_s)
                    dispatched += top_up
            rss_end = hub.memory_info().rss / 2**20
            main_session.call_tool("runner_stop", {})  # freeze: the runs started end
            while main_session.call_tool("runner_status", {"limit": 0})["result"][
                "structuredContent"
            ]["running"]:
                pass
            status = hub_status(env)
            subs_end, tasks_end = len(status["subscribers"]), status["tasks"]
            completed = main_session.call_tool("runner_status", {"limit": 0})["result"][
                "structuredContent"
            ]["completed"]
        except BenchError as e:
            log(f"check failed: {e}")
            return 1
        finally:
            for c in clients:
                c.close()
            stop_hub(home)
        left = leftovers(root)
        if left:
            log(f"processes left running: {left}")
            return 1
    results = {
        "queued": queued,
        "sessions": sessions,
        "seconds": seconds,
        "run_s": args.run_s,
        "runs_completed": completed,
        "rss_mb_start": round(rss_start, 1),
        "rss_mb_end": round(rss_end, 1),
        "status_p99_idle_ms": percentile(idle, 99),
        "status_p99_load_ms": percentile(load, 99),
        "status_p99_ratio": percentile(load, 99) / percentile(idle, 99),
        "other_p99_idle_ms": percentile(idle_other, 99),
        "other_p99_load_ms": percentile(load_other, 99),
        "other_p99_ratio": percentile(load_other, 99) / percentile(idle_other, 99),
        "subscriptions_start": subs_start,
        "subscriptions_end": subs_end,
        "tasks_start": tasks_start,
        "tasks_end": tasks_end,
        "valid": subs_end <= subs_start and tasks_end <= tasks_start,
    }
    if args.json:
        print(json.dumps(no_nan({"results": [results]}), indent=2))
        return 0
    for key, value in results.items():
        print(f"{key:24} {value:.2f}" if isinstance(value, float) else f"{key:24} {value}")
    return 0 if results["valid"] else 1


if __name__ == "__main__":
    sys.exit(main())
