"""Benchmarks of the assistant loop: how fast `fleetbus serve` starts, and how fast a run's
end reaches the client as a channel event, beside baselines measured in the same run.

Run it as a script (it is not a pytest test)::

    python tests/bench/bench_assistant_loop.py            # full run, about a minute
    python tests/bench/bench_assistant_loop.py --quick    # smoke run
    python tests/bench/bench_assistant_loop.py --json     # the results as JSON on stdout

1. Start: a raw stdio client (`fleetbus.testing.mcp_wire`) spawns the server and sends
   `initialize` then `tools/list` at once; measured from spawn to each answer. Subjects:
   `fleetbus serve` with the home's hub running ("hub running"), with no hub but the tool
   list the last hub published ("hub cold"), in a home never used ("first use"), and a
   bare `MCPServer` script (the baseline: the SDK's own start). They alternate in rounds;
   figures are medians and p90 over rounds. Goal: <= 0.5 s with the hub running.
2. Bursts: N one-second runs (`sleep 1`, all lanes wide) dispatched at once over one
   session; each agent writes its exit time (wall clock) as its last act, and the client
   notes when the channel event saying the run completed arrived (alone, or named in a
   coalesced event's `statuses`). p50/p99 of exit -> event over every run, for N = 10
   and 100. Goal: p99 <= 100 ms.

Timings are reported, never asserted; the exit status is 1 only when a correctness check
fails (a missing answer, a run not completed, a status missing from the events, a process
left running).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from common import BenchError, leftovers, log, no_nan, percentile

from fleetbus.testing.hub import stop_hub
from fleetbus.testing.mcp_wire import CHANNEL_METHOD, WireClient

SERVE = [sys.executable, "-m", "fleetbus.server", "serve"]
GOAL_START_S = 0.5
GOAL_EVENT_P99_MS = 100.0
BASELINE_SCRIPT = '''\
"""The baseline: a bare MCPServer with one tool."""
from mcp.server import MCPServer

server = MCPServer("bench-baseline")


@server.tool()
async def runner_status(limit: int = 0) -> dict[str, int]:
    """A constant."""
    return {"running": 0}


if __name__ == "__main__":
    server.run()
'''
CONFIG = """\
agents:
  second:
    command: ["sh", "-c", "sleep 1; date +%s.%N > \\"$EXITS/$FLEETBUS_RUN_ID\\"", "{prompt}"]
    prompt: arg
    env: [EXITS]
    concurrency: 200
dispatch:
  total_concurrency: 200
"""


@dataclass
class Result:
    name: str
    p50: float
    p90_or_p99: float
    unit: str
    ratio: float | None = None
    goal: str = ""
    valid: bool = True


def environment(root: Path, name: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETBUS_")}
    home = root / name
    config = root / "fleetbus.yaml"
    config.write_text(CONFIG)
    exits = root / "exits"
    exits.mkdir(exist_ok=True)
    env.update(
        FLEETBUS_HOME=str(home),
        FLEETBUS_CONFIG=str(config),
        XDG_CONFIG_HOME=str(root / "xdg"),
        EXITS=str(exits),
    )
    return env


def start_once(argv: list[str], env: dict[str, str], cwd: Path) -> tuple[float, float]:
    """Spawn -> initialize answered, spawn -> tools/list answered (seconds)."""
    with WireClient(argv, env, cwd=cwd) as client:
        init_id = client.request(
            "initialize",
            {
                "protocolVersion": "2025-11-25",
                "capabilities": {},
                "clientInfo": {"name": "bench", "version": "1"},
            },
        )
        client.notify("notifications/initialized")
        tools_id = client.request("tools/list")
        init = client.response(init_id, 30)
        tools = client.response(tools_id, 30)
        if "result" not in init or not tools.get("result", {}).get("tools"):
            raise BenchError(f"{argv[-1]}: no answer: {init} {tools}")
        return client.arrival(init) - client.spawned_at, client.arrival(tools) - client.spawned_at


def settle(env: dict[str, str], cwd: Path) -> None:
    """Wait until the hub has its MCP server loaded (a tool call answered), as a hub that
    has been running a while has."""
    with WireClient(SERVE, env, cwd=cwd) as client:
        client.open()
        reply = client.call_tool("runner_status", {"limit": 0})
        if "result" not in reply:
            raise BenchError(f"runner_status failed: {reply}")


def bench_start(root: Path, rounds: int) -> list[Result]:
    baseline = root / "baseline.py"
    baseline.write_text(BASELINE_SCRIPT)
    samples: dict[str, list[tuple[float, float]]] = {
        k: [] for k in ("baseline", "hub running", "hub cold", "first use")
    }
    for n in range(rounds):
        samples["baseline"].append(
            start_once([sys.executable, str(baseline)], dict(os.environ), root)
        )
        first = environment(root, f"start{n}")
        samples["first use"].append(start_once(SERVE, first, root))
        settle(first, root)
        samples["hub running"].append(start_once(SERVE, first, root))
        stop_hub(Path(first["FLEETBUS_HOME"]))
        samples["hub cold"].append(start_once(SERVE, first, root))
        stop_hub(Path(first["FLEETBUS_HOME"]))
    base = statistics.median(s[1] for s in samples["baseline"])
    out = []
    for name, pairs in samples.items():
        for which, idx in (("initialize", 0), ("tools/list", 1)):
            values = [p[idx] for p in pairs]
            med = statistics.median(values)
            goal = f"<= {GOAL_START_S} s" if name == "hub running" else ""
            out.append(
                Result(
                    f"start, {name}: spawn -> {which}",
                    med,
                    percentile(values, 90),
                    "s",
                    ratio=med / base if which == "tools/list" else None,
                    goal=goal,
                )
            )
    return out


def ended_at(msg: dict[str, Any]) -> list[str]:
    """The runs a channel event reports completed."""
    meta = msg["params"]["meta"]
    if meta.get("statuses"):
        pairs = [p.partition(":") for p in meta["statuses"].split(",")]
        return [rid for rid, _, st in pairs if st == "completed"]
    return [meta["run_id"]] if meta.get("status") == "completed" and "run_id" in meta else []


def bench_burst(root: Path, size: int) -> Result:
    env = environment(root, f"burst{size}")
    exits = Path(env["EXITS"])
    with WireClient(SERVE, env, cwd=root) as client:
        client.open_like_claude_code()
        ids: list[str] = []
        requests = [
            client.request(
                "tools/call",
                {
                    "name": "runner_dispatch",
                    "arguments": {"agent": "second", "prompt": "x", "workspace": f"b/{size}/t{n}"},
                },
            )
            for n in range(size)
        ]
        for req in requests:
            reply = client.response(req, 30)
            ids.append(reply["result"]["structuredContent"]["run_id"])
        arrived: dict[str, float] = {}

        def all_seen(_: Any) -> bool:
            for msg, at in zip(list(client.messages), list(client.arrived), strict=False):
                if msg.get("method") == CHANNEL_METHOD:
                    for rid in ended_at(msg):
                        arrived.setdefault(rid, at)
            return all(r in arrived for r in ids)

        client.wait_for(all_seen, 60)
        # arrival times are monotonic: turn them into wall clock with one offset
        offset = time.time() - time.monotonic()
        lags = []
        for rid in ids:
            exit_wall = float((exits / rid).read_text())
            lags.append((arrived[rid] + offset - exit_wall) * 1000)
    stop_hub(Path(env["FLEETBUS_HOME"]))
    p99 = percentile(lags, 99)
    return Result(
        f"burst of {size}: agent exit -> completed event",
        percentile(lags, 50),
        p99,
        "ms",
        goal=f"p99 <= {GOAL_EVENT_P99_MS:g} ms",
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    rounds = 3 if args.quick else 9
    sizes = (10,) if args.quick else (10, 100)
    with tempfile.TemporaryDirectory(prefix="fb-bench-") as tmp:
        root = Path(tmp)
        results: list[Result] = []
        try:
            log(f"start: {rounds} rounds")
            results += bench_start(root, rounds)
            for size in sizes:
                log(f"burst of {size}")
                results.append(bench_burst(root, size))
        except BenchError as e:
            log(f"check failed: {e}")
            return 1
        finally:
            for home in root.iterdir():
                if (home / "hub.lock").exists():
                    stop_hub(home)
            left = leftovers(root)
        if left:
            log(f"processes left running: {left}")
            return 1
    if args.json:
        print(json.dumps(no_nan({"results": [asdict(r) for r in results]}), indent=2))
        return 0
    print(f"{'measure':58} {'p50':>9} {'p90/p99':>9}  {'ratio':>6}  goal")
    for r in results:
        ratio = f"{r.ratio:.2f}x" if r.ratio is not None else ""
        scale = 1.0
        print(
            f"{r.name:58} {r.p50 * scale:8.3f}{r.unit:1} {r.p90_or_p99 * scale:8.3f}{r.unit:1}"
            f"  {ratio:>6}  {r.goal}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
