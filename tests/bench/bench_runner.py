"""Benchmarks of the runner against raw baselines measured in the same run.

Run it as a script (it is not a pytest test)::

    python tests/bench/bench_runner.py            # full run, under 3 minutes
    python tests/bench/bench_runner.py --quick    # smoke run, under 30 seconds
    python tests/bench/bench_runner.py --json     # the results as JSON on stdout

Four measurements, each against a baseline or a reference case measured in the same run,
on hubs embedded in this process (dispatch is `hub.bus.perform("runner.dispatch", ...)`):

1. throughput: 1,000 runs of a no-op agent (`true`, prompt on stdin) at total concurrency
   16, each in its own workspace (so session queues never serialize them), dispatched the
   way a client with many calls in flight sends them: pipelined over one IPC connection to
   the hub's socket, up to 256 unanswered (the hub's limit per connection), timed from the
   first dispatch to the last `runner.run_completed`;
   vs a raw loop of `anyio.open_process(["true"])` by 16 workers each awaiting
   `process.wait()`, with nothing persisted (runs per second; goal: ratio >= 0.7). A third
   side, for information, is the runner's process recipe alone ("floor": run directory,
   prompt file, `processes.spawn` of the wrapper, `processes.wait_child`; no store, bus
   or lock), which tells the cost of the files and processes from the runner's own.
   Where /dev/shm exists, two more: that recipe with its files in memory, and the whole
   runner with its home (store and run directories) in memory; they tell what the disk
   costs from what the runner's own work does.
2. dispatch -> running, with a free lane: from just before `perform("runner.dispatch")`
   until the `runner.run_started` message has arrived and the wrapper's pid file exists
   (goal: p99 <= 50 ms). The agent stamps `date +%s%N` as its first instruction, so
   "dispatch returned", "run_started received" and "the agent's first instruction" are
   reported too; the baseline is `anyio.open_process` of the same agent.
3. agent exit -> `runner.run_completed` received: the agent stamps the time as its last
   instruction (goal: p99 <= 50 ms); the baseline is the same stamp to `process.wait()`.
   Rows 2 and 3 show p99 over all samples; their ratio is the median of the per-round
   ratios of p50s of a like-for-like measure (the agent's first instruction; the exit
   stamp to the notice).
4. next-run pick: `queue.pick_in` (the indexed choice of the next
   run) with 100 vs 100,000 queued runs of one agent in the table, on two frozen hubs side
   by side (goal: ratio <= 2); for information also with the first 64 heads blocked by a
   busy session (one more page), with 1,024 queued runs of a model whose lane is full ahead
   of the pick (paging), and `runner.dispatch` into each frozen queue (its answer has the
   position).

Shared machines are noisy: baseline and fleetbus alternate in several rounds (ABBA order);
a ratio is the median of the per-round ratios, a figure the median over rounds, and p50/p99
are over every sample of every round. Timings are reported, never asserted; the exit
status is 1 only when a correctness check fails (a run that did not start, complete or
exit 0, a missing or dropped message, a wrong pick, an agent left running).
"""

from __future__ import annotations

import argparse
import gc
import math
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, asynccontextmanager, contextmanager, suppress
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
from common import BenchError, Result, aligned, json_report, leftovers, log, percentile

from fleetbus.bus.client import HubClient
from fleetbus.bus.hub import Hub
from fleetbus.bus.messages import Envelope
from fleetbus.plugins.runner import processes, runner_of
from fleetbus.plugins.runner.queue import Pick, pick_in
from fleetbus.plugins.runner.service import Runner
from fleetbus.testing.hub import embedded_hub, isolated_env

CONCURRENCY = 16
PIPELINED = 256  # dispatches in flight on the throughput bench's one IPC connection
SETTLE_TIMEOUT = 60.0  # every run of a bench must have ended by then
# The latency agent: its first and last instructions stamp the wall clock (ns) into a file
# of its workspace. The exit stamp appends (no file creation between it and the exit).
STAMPS = ".fb-stamps"
PROBE = f"date +%s%N > {STAMPS}; sleep 0.05; exec date +%s%N >> {STAMPS}"
CONFIG = f"""\
agents:
  noop: {{command: ["true"], prompt: stdin, concurrency: {CONCURRENCY}}}
  probe: {{command: [sh, -c, "{PROBE}"], prompt: stdin, concurrency: {CONCURRENCY}}}
  multi: {{command: ["true"], prompt: stdin, models: [m1, m2], concurrency: {{total: {CONCURRENCY}, m1: 1}}}}
dispatch: {{total_concurrency: {CONCURRENCY}, session: {{debounce_ms: 0}}}}
"""
HEAD_BLOCKED_PAGE = 64  # = service.HEAD_PAGE: the first page is entirely blocked
HEAD_BLOCKED_MANY = 1024  # queued runs of a model whose lane is full, ahead of the pick


@dataclass(frozen=True)
class Profile:
    rounds: int
    runs: int  # throughput: runs per round
    latency_samples: int  # per side, over all rounds
    head_small: int
    head_big: int
    head_calls: int  # per side and round
    queue_dispatches: int  # per side and round


FULL = Profile(
    rounds=5,
    runs=1_000,
    latency_samples=100,
    head_small=100,
    head_big=100_000,
    head_calls=200,
    queue_dispatches=10,
)
QUICK = Profile(
    rounds=3,
    runs=150,
    latency_samples=24,
    head_small=100,
    head_big=20_000,
    head_calls=50,
    queue_dispatches=4,
)


def ratio_of(base: list[float], subj: list[float]) -> float:
    return statistics.median(s / b for b, s in zip(base, subj, strict=True))


async def interleave(
    rounds: int,
    baseline: Callable[[int], Awaitable[float]],
    subject: Callable[[int], Awaitable[float]],
) -> tuple[list[float], list[float]]:
    """Run both sides `rounds` times in ABBA order; each call returns one figure."""
    base: list[float] = []
    subj: list[float] = []
    for r in range(rounds):
        order = [(baseline, base), (subject, subj)]
        if r % 2:
            order.reverse()
        for fn, sink in order:
            gc.collect()
            sink.append(await fn(r))
    return base, subj


# -- hubs ------------------------------------------------------------------------------------
@asynccontextmanager
async def bench_hub(
    root: Path, name: str, *, frozen: bool = False, socket: bool = False
) -> AsyncIterator[Hub]:
    """A hub in `root/name` with the bench agents; every run has ended when it stops."""
    config = root / "fleetbus.yaml"
    if not config.exists():
        config.write_text(CONFIG)
    home = root / name
    env = isolated_env(home, config=config)
    if frozen:
        env["FLEETBUS_FROZEN"] = "1"
    async with embedded_hub(home, env=env, serve_socket=socket) as hub:
        try:
            yield hub
        finally:
            with anyio.CancelScope(shield=True):
                await end_every_run(hub)


async def end_every_run(hub: Hub) -> None:
    """Wait for the hub's runs to end; kill what is left (and report it as a failure)."""
    runner = runner_of(hub)
    with anyio.move_on_after(SETTLE_TIMEOUT):
        while runner.active:
            await anyio.sleep(0.01)
    if not runner.active:
        return
    left = [(a.run_id, a.pid) for a in runner.active.values()]
    await hub.bus.perform("runner.kill", {})
    with anyio.move_on_after(10):
        while runner.active:
            await anyio.sleep(0.01)
    for active in list(runner.active.values()):
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(active.pid, signal.SIGKILL)
    raise BenchError(f"runs still active {SETTLE_TIMEOUT:g}s after the bench: {left}")


def assert_no_leftovers(root: Path) -> None:
    """No process may still run inside the bench's directory (agents, wrappers, baselines)."""
    found = leftovers(root)
    if found:
        raise BenchError(f"processes still running after the bench (killed): {found[:5]}")


class Recorder:
    """Records when each runner message arrives (wall clock), keyed by (topic, run_id)."""

    def __init__(self, hub: Hub, topics: list[str], buffer: int) -> None:
        self.sub = hub.bus.open_subscription(topics, name="bench", buffer=buffer)
        self.hub = hub
        self.arrived: dict[tuple[str, str], tuple[float, Envelope]] = {}
        self.counts: dict[str, int] = {}
        self.failed: list[tuple[str, str, str]] = []  # runs that ended other than completed
        self._waiters: dict[tuple[str, str], anyio.Event] = {}
        self._count_waiter: tuple[str, int, anyio.Event] | None = None

    async def run(self) -> None:
        async for envelope in self.sub:
            t = time.time()
            msg = envelope.message
            run_id = getattr(msg, "run_id", "")
            key = (envelope.topic, run_id)
            self.arrived[key] = (t, envelope)
            self.counts[envelope.topic] = self.counts.get(envelope.topic, 0) + 1
            status = getattr(msg, "status", "completed")
            if envelope.topic == "runner.run_completed" and status != "completed":
                self.failed.append((run_id, status, getattr(msg, "reason", "")))
            waiter = self._waiters.pop(key, None)
            if waiter is not None:
                waiter.set()
            if self._count_waiter is not None:
                topic, n, event = self._count_waiter
                if self.counts.get(topic, 0) >= n or self.failed:
                    event.set()

    async def wait(self, topic: str, run_id: str, timeout: float) -> tuple[float, Envelope]:
        key = (topic, run_id)
        if key not in self.arrived:
            event = self._waiters.setdefault(key, anyio.Event())
            with anyio.move_on_after(timeout):
                await event.wait()
        if key not in self.arrived:
            raise BenchError(f"no {topic} for run {run_id} within {timeout:g}s")
        return self.arrived[key]

    async def wait_count(self, topic: str, n: int, timeout: float) -> None:
        event = anyio.Event()
        self._count_waiter = (topic, n, event)
        if self.counts.get(topic, 0) < n and not self.failed:
            with anyio.move_on_after(timeout):
                await event.wait()
        self._count_waiter = None
        if self.failed:
            raise BenchError(f"{len(self.failed)} run(s) did not complete: {self.failed[:3]}")
        if self.counts.get(topic, 0) < n:
            raise BenchError(
                f"{self.counts.get(topic, 0)} of {n} {topic} messages within {timeout:g}s"
                f" ({self.sub.dropped} dropped)"
            )

    def forget(self) -> None:
        self.arrived.clear()
        self.counts.clear()
        self.failed.clear()

    def close(self) -> None:
        self.hub.bus.close_subscription(self.sub)


@asynccontextmanager
async def recording(hub: Hub, topics: list[str], buffer: int) -> AsyncIterator[Recorder]:
    rec = Recorder(hub, topics, buffer)
    async with anyio.create_task_group() as tg:
        tg.start_soon(rec.run)
        try:
            yield rec
        finally:
            rec.close()
    if rec.sub.dropped:
        raise BenchError(f"the bench's subscription dropped {rec.sub.dropped} message(s)")


async def dispatch(hub: Hub, agent: str, workspace: str) -> Any:
    return await hub.bus.perform(
        "runner.dispatch", {"agent": agent, "prompt": "bench", "workspace": workspace}
    )


# -- 1. throughput -----------------------------------------------------------------------------
async def raw_true_loop(n: int) -> None:
    """`true` n times by 16 workers, each awaiting `process.wait()`; nothing persisted."""
    remaining = n
    failures: list[int] = []

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            process = await anyio.open_process(
                ["true"],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            async with process:
                code = await process.wait()
            if code != 0:
                failures.append(code)

    async with anyio.create_task_group() as tg:
        for _ in range(CONCURRENCY):
            tg.start_soon(worker)
    if failures:
        raise BenchError(f"raw `true` exited non-zero {len(failures)} time(s): {failures[:5]}")


async def spawn_floor_loop(n: int, root: Path, workspace: Path) -> None:
    """The runner's own process recipe without the runner: per run a run directory and a
    prompt file, `processes.spawn` (the wrapper, output.log) and `processes.wait_child`,
    by 16 workers; no store, bus, lock or bookkeeping."""
    remaining = n
    failures: list[int] = []
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG", "LC_ALL", "TZ")}

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            run_dir = root / f"f{remaining}"
            run_dir.mkdir()
            prompt = run_dir / "prompt.txt"
            prompt.write_text("bench")
            pid = processes.spawn(
                ["true"],
                cwd=workspace,
                env=env,
                run_dir=run_dir,
                log=run_dir / "output.log",
                stdin=prompt,
            )
            code = await processes.wait_child(pid)
            processes.signal_group(pid, signal.SIGKILL)
            if code != 0:
                failures.append(code)

    async with anyio.create_task_group() as tg:
        for _ in range(CONCURRENCY):
            tg.start_soon(worker)
    if failures:
        raise BenchError(f"the spawn floor's runs exited non-zero: {failures[:5]}")


async def fleet_round(
    hub: Hub, rec: Recorder, workspaces: list[str], count: int
) -> tuple[float, float, float, int]:
    """`count` no-op runs dispatched pipelined over one IPC connection, each checked to
    have completed: (runs/s, the dispatch phase in s, loop CPU ms per run, queued)."""
    runner = runner_of(hub)
    rec.forget()
    ids: list[str] = []
    queued = 0
    c0 = time.thread_time()
    t0 = time.perf_counter()
    answers: dict[int, dict[str, Any]] = {}
    in_flight = anyio.Semaphore(PIPELINED)

    async def send(i: int, ws: str) -> None:
        async with in_flight:
            answers[i] = await client.perform(
                "runner.dispatch", {"agent": "noop", "prompt": "bench", "workspace": ws}
            )

    async with (
        HubClient.open(hub.socket_path) as client,
        anyio.create_task_group() as tg,
    ):
        for i, ws in enumerate(workspaces[:count]):
            tg.start_soon(send, i, ws)
    for i, ws in enumerate(workspaces[:count]):
        res = answers[i]
        if res["status"] not in ("running", "queued"):
            raise BenchError(f"dispatch to {ws} answered {res['status']}: {res.get('reason')}")
        queued += res["status"] == "queued"
        ids.append(res["run_id"])
    t1 = time.perf_counter()
    await rec.wait_count("runner.run_completed", count, SETTLE_TIMEOUT)
    t2 = time.perf_counter()
    c1 = time.thread_time()
    bad = []
    for run_id in ids:
        got = rec.arrived.get(("runner.run_completed", run_id))
        msg = got[1].message if got else None
        if msg is None or getattr(msg, "status", None) != "completed":
            bad.append((run_id, getattr(msg, "status", None), getattr(msg, "reason", "")))
    if bad:
        raise BenchError(f"{len(bad)} of {count} no-op runs did not complete: {bad[:3]}")
    if runner.active or runner.queued_total:
        raise BenchError(
            f"after the last completion {len(runner.active)} runs are active and "
            f"{runner.queued_total} queued"
        )
    return count / (t2 - t0), t1 - t0, (c1 - c0) / count * 1000, queued


@asynccontextmanager
async def throughput_hub(root: Path, workspaces: list[str]) -> AsyncIterator[tuple[Hub, Recorder]]:
    """A hub serving its socket in `root`, every workspace made, its completions recorded."""
    async with bench_hub(root, "throughput", socket=True) as hub:
        for ws in workspaces:  # made once, outside the timing: every round finds them
            (runner_of(hub).root / ws).mkdir(parents=True, exist_ok=True)
        async with recording(hub, ["runner.run_completed"], buffer=2 * len(workspaces) + 64) as rec:
            yield hub, rec


async def bench_throughput(profile: Profile, tmp: Path) -> list[Result]:
    n = profile.runs
    name = f"throughput, {n:,} no-op runs @{CONCURRENCY}"
    workspaces = [f"b/n/r{i}" for i in range(n)]
    cpu: dict[str, list[float]] = {"baseline": [], "fleetbus": []}
    dispatch_s: list[float] = []
    queued_at_dispatch: list[int] = []
    floor_rounds = iter(range(1_000_000))

    async def baseline(_r: int) -> float:
        c0 = time.thread_time()
        t0 = time.perf_counter()
        await raw_true_loop(n)
        elapsed = time.perf_counter() - t0
        cpu["baseline"].append((time.thread_time() - c0) / n * 1000)
        return n / elapsed

    def floor_in(where: Path) -> Callable[[int], Awaitable[float]]:
        workspace = where / "floor-ws"
        workspace.mkdir()

        async def floor(_r: int) -> float:
            root = where / f"floor-{next(floor_rounds)}"
            root.mkdir()
            t0 = time.perf_counter()
            await spawn_floor_loop(n, root, workspace)
            return n / (time.perf_counter() - t0)

        return floor

    async with AsyncExitStack() as stack:
        hub, rec = await stack.enter_async_context(throughput_hub(tmp, workspaces))

        async def subject(_r: int) -> float:
            rate, dispatched, cpu_ms, queued = await fleet_round(hub, rec, workspaces, n)
            cpu["fleetbus"].append(cpu_ms)
            dispatch_s.append(dispatched)
            queued_at_dispatch.append(queued)
            return rate

        floor = floor_in(tmp)
        sides = [baseline, subject, floor]
        # with a memory file system: the floor, then the whole runner, with their files
        # there; together they tell the disk's share from the runner's own work
        memory = stack.enter_context(memory_directory())
        if memory is not None:
            in_memory = await stack.enter_async_context(throughput_hub(memory, workspaces))

            async def subject_in_memory(_r: int) -> float:
                return (await fleet_round(*in_memory, workspaces, n))[0]

            sides += [floor_in(memory), subject_in_memory]
            await fleet_round(*in_memory, workspaces, min(n, 100))
        await raw_true_loop(min(n, 100))  # warm up
        await fleet_round(hub, rec, workspaces, min(n, 100))
        await floor(0)
        # the sides, each round in another order
        got: list[list[float]] = [[] for _ in sides]
        for r in range(profile.rounds):
            for k in range(len(sides)):
                i = (k + r) % len(sides)
                gc.collect()
                got[i].append(await sides[i](r))
        base, subj, flo = got[:3]
    assert_no_leftovers(tmp)
    ratio = ratio_of(base, subj)
    floor_ratio = ratio_of(base, flo)
    floor_row = Result(
        name="  floor: the runner's spawn + wait alone",
        unit="runs/s",
        goal="info",
        baseline=statistics.median(base),
        fleetbus=statistics.median(flo),
        ratio=floor_ratio,
        met=None,
        rounds={"baseline": base, "fleetbus": flo},
        extra={"runs_per_round": n, "what": "mkdir + prompt file + processes.spawn + wait_child"},
    )
    main_row = Result(
        name=name,
        unit="runs/s",
        goal=">= 0.7x",
        baseline=statistics.median(base),
        fleetbus=statistics.median(subj),
        ratio=ratio,
        met=ratio >= 0.7,
        rounds={"baseline": base, "fleetbus": subj},
        extra={
            "runs_per_round": n,
            "concurrency": CONCURRENCY,
            "dispatch_phase_s": statistics.median(dispatch_s),
            "dispatch_ms_mean": statistics.median(dispatch_s) / n * 1000,
            "queued_at_dispatch": statistics.median(queued_at_dispatch),
            "loop_cpu_ms_per_run": {k: statistics.median(v) for k, v in cpu.items()},
        },
    )
    rows = [main_row, floor_row]
    for side, what in (
        (3, "  floor, its files in memory (tmpfs)"),
        (4, "  fleetbus, its home in memory (tmpfs)"),
    ):
        if side < len(got):
            rows.append(
                Result(
                    name=what,
                    unit="runs/s",
                    goal="info",
                    baseline=statistics.median(base),
                    fleetbus=statistics.median(got[side]),
                    ratio=ratio_of(base, got[side]),
                    met=None,
                    rounds={"baseline": base, "fleetbus": got[side]},
                    extra={"runs_per_round": n, "where": "/dev/shm"},
                )
            )
    return rows


@contextmanager
def memory_directory() -> Iterator[Path | None]:
    """A fresh directory on a memory file system (/dev/shm), removed after; None where
    there is none."""
    shm = Path("/dev/shm")
    if not (shm.is_dir() and os.access(shm, os.W_OK)):
        yield None
        return
    path = Path(tempfile.mkdtemp(prefix="fleetbus-bench-", dir=shm))
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


# -- 2 and 3. dispatch -> running, exit -> run_completed ---------------------------------------
def read_stamps(path: Path) -> tuple[float, float]:
    try:
        lines = path.read_text().split()
    except OSError as e:
        raise BenchError(f"the agent wrote no stamps ({e})") from None
    if len(lines) != 2 or not all(x.isdigit() for x in lines):
        raise BenchError(f"the agent's stamps are {lines!r}, expected two integers")
    return int(lines[0]) / 1e9, int(lines[1]) / 1e9


def check_date() -> None:
    out = subprocess.run(["date", "+%s%N"], capture_output=True, text=True, check=False).stdout
    if not out.strip().isdigit() or len(out.strip()) < 19:
        raise BenchError(f"`date +%s%N` printed {out.strip()!r}: GNU date is needed")


async def bench_latency(profile: Profile, tmp: Path) -> list[Result]:
    check_date()
    per_round = max(1, math.ceil(profile.latency_samples / profile.rounds))
    raw_dir = tmp / "raw-probe"
    raw_dir.mkdir()
    raw_env = {k: os.environ[k] for k in ("PATH", "LANG") if k in os.environ}
    # samples, in ms
    b_spawned: list[float] = []  # open_process returned
    b_first: list[float] = []  # the agent's first instruction
    b_exit: list[float] = []  # exit stamp -> wait() returned
    f_returned: list[float] = []  # dispatch returned
    f_started: list[float] = []  # run_started received
    f_running: list[float] = []  # run_started received and the pid file exists
    f_first: list[float] = []
    f_exit: list[float] = []  # exit stamp -> run_completed received
    f_exit_published: list[float] = []  # exit stamp -> run_completed published

    async with bench_hub(tmp, "latency") as hub:
        runner = runner_of(hub)
        workspace = "lat/probe/w"
        ws_path = runner.root / workspace
        ws_path.mkdir(parents=True, exist_ok=True)
        async with recording(hub, ["runner.run_started", "runner.run_completed"], 4096) as rec:

            async def raw_sample(keep: bool) -> float:
                (raw_dir / STAMPS).unlink(missing_ok=True)
                t0 = time.time()
                process = await anyio.open_process(
                    ["sh", "-c", PROBE],
                    cwd=raw_dir,
                    env=raw_env,
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
                t1 = time.time()
                async with process:
                    code = await process.wait()
                t2 = time.time()
                if code != 0:
                    raise BenchError(f"the raw probe exited {code}")
                first, last = read_stamps(raw_dir / STAMPS)
                if keep:
                    b_spawned.append((t1 - t0) * 1000)
                    b_first.append((first - t0) * 1000)
                    b_exit.append((t2 - last) * 1000)
                return (first - t0) * 1000

            async def fleet_sample(keep: bool) -> float:
                (ws_path / STAMPS).unlink(missing_ok=True)
                t0 = time.time()
                res = await dispatch(hub, "probe", workspace)
                t1 = time.time()
                if res.status != "running":
                    raise BenchError(
                        f"dispatch with a free lane answered {res.status}: {res.reason}"
                    )
                t_started, _ = await rec.wait("runner.run_started", res.run_id, 10)
                pid_file = runner.runs_dir / res.run_id / "pid"
                t_running = t_started  # when the pid file is there by then
                deadline = time.monotonic() + 10
                while not pid_file.exists():
                    if time.monotonic() > deadline:
                        raise BenchError(f"no pid file {pid_file} 10s after run_started")
                    await anyio.sleep(0.0002)
                    t_running = time.time()
                t_done, env_done = await rec.wait("runner.run_completed", res.run_id, 10)
                done = env_done.message
                if getattr(done, "status", None) != "completed":
                    raise BenchError(
                        f"probe run {res.run_id} ended {getattr(done, 'status', None)}: "
                        f"{getattr(done, 'reason', '')}"
                    )
                first, last = read_stamps(ws_path / STAMPS)
                if keep:
                    f_returned.append((t1 - t0) * 1000)
                    f_started.append((t_started - t0) * 1000)
                    f_running.append((t_running - t0) * 1000)
                    f_first.append((first - t0) * 1000)
                    f_exit.append((t_done - last) * 1000)
                    f_exit_published.append((env_done.ts - last) * 1000)
                return (t_running - t0) * 1000

            for _ in range(3):  # warm up
                await raw_sample(False)
                await fleet_sample(False)

            async def baseline(_r: int) -> float:
                start = len(b_first)
                for _ in range(per_round):
                    await raw_sample(True)
                return statistics.median(b_first[start:])

            async def subject(_r: int) -> float:
                start = len(f_first)
                for _ in range(per_round):
                    await fleet_sample(True)
                return statistics.median(f_first[start:])

            base, subj = await interleave(profile.rounds, baseline, subject)
            base_exit = [
                statistics.median(b_exit[r * per_round : (r + 1) * per_round])
                for r in range(profile.rounds)
            ]
            subj_exit = [
                statistics.median(f_exit[r * per_round : (r + 1) * per_round])
                for r in range(profile.rounds)
            ]
    assert_no_leftovers(tmp)

    def stats(samples: list[float]) -> dict[str, float]:
        return {"p50_ms": percentile(samples, 50), "p99_ms": percentile(samples, 99)}

    details_start = {
        "baseline: open_process returned": stats(b_spawned),
        "baseline: agent's first instruction": stats(b_first),
        "fleetbus: dispatch returned": stats(f_returned),
        "fleetbus: run_started received": stats(f_started),
        "fleetbus: run_started received + pid file": stats(f_running),
        "fleetbus: agent's first instruction": stats(f_first),
    }
    details_exit = {
        "baseline: exit stamp -> wait() returned": stats(b_exit),
        "fleetbus: exit stamp -> run_completed published": stats(f_exit_published),
        "fleetbus: exit stamp -> run_completed received": stats(f_exit),
    }
    start_p99 = percentile(f_running, 99)
    exit_p99 = percentile(f_exit, 99)
    return [
        Result(
            name="dispatch -> running (free lane), p99",
            unit="ms",
            goal="p99 <= 50ms",
            baseline=percentile(b_first, 99),
            fleetbus=start_p99,
            ratio=ratio_of(base, subj),
            met=start_p99 <= 50,
            rounds={"baseline": base, "fleetbus": subj},
            extra={"samples_per_side": len(f_running), "latency": details_start},
        ),
        Result(
            name="agent exit -> run_completed, p99",
            unit="ms",
            goal="p99 <= 50ms",
            baseline=percentile(b_exit, 99),
            fleetbus=exit_p99,
            ratio=ratio_of(base_exit, subj_exit),
            met=exit_p99 <= 50,
            rounds={"baseline": base_exit, "fleetbus": subj_exit},
            extra={"samples_per_side": len(f_exit), "latency": details_exit},
        ),
    ]


# -- 4. next-run pick with a short and a long queue ---------------------------------------------
async def fill_queue(
    hub: Hub, agent: str, segments: list[tuple[str | None, int]]
) -> list[tuple[str, str, str | None]]:
    """Insert queued runs of `agent` in one transaction: `count` of each `(model, count)`
    in turn. Returns the first (id, workspace, model) rows in queue order."""
    now = time.time()
    runner = runner_of(hub)

    def rows() -> Any:
        i = 0
        for model, count in segments:
            for _ in range(count):
                yield (
                    f"q-{agent}-{i:07d}",
                    f"q/{agent}/r{i}",
                    agent,
                    model,
                    "bench",
                    2,  # medium
                    "queue",
                    "queued",
                    "",
                    3600.0,
                    now,
                    0.0,
                )
                i += 1

    def fill(tx: Any) -> None:
        tx.db.conn.executemany(
            "INSERT INTO runs (id, workspace, agent, model, prompt, priority, session_mode, "
            "status, reason, timeout_s, created_at, not_before) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            rows(),
        )

    await hub.store.write(fill)
    order = await hub.store.read(
        lambda db: [
            (r[0], r[1], r[2])
            for r in db.execute(
                "SELECT id, workspace, model FROM runs WHERE status = 'queued' AND agent = ? "
                "ORDER BY priority, seq LIMIT ?",
                [agent, HEAD_BLOCKED_MANY + 100],
            )
        ]
    )
    runner.state.queued_by_agent[agent] = sum(count for _, count in segments)
    return order


class Blocked:
    """Block the first `k` queued runs by marking their workspaces busy (as the runner's
    session count sees it), or, with `lane_model`, block every queued run of that model by
    filling its lane. `expected` is the run the pick must find then."""

    def __init__(
        self,
        runner: Runner,
        agent: str,
        order: list[tuple[str, str, str | None]],
        k: int,
        *,
        lane_model: str | None = None,
    ) -> None:
        self.runner, self.agent, self.lane_model = runner, agent, lane_model
        self.workspaces: list[str] = []
        self.lane_full = bool(lane_model and k)
        if lane_model is None:
            self.workspaces = [ws for _, ws, _ in order[:k]]
            self.expected = order[k][0] if k < len(order) else None
        elif self.lane_full:
            self.expected = next((run_id for run_id, _, m in order if m != lane_model), None)
        else:
            self.expected = order[0][0]

    def __enter__(self) -> Blocked:
        for ws in self.workspaces:
            self.runner.state.session_active[ws] = self.runner.state.session.max_concurrent
        if self.lane_full and self.lane_model is not None:
            _, per_model = self.runner.state.agents[self.agent].limits()
            self.runner.state.lanes.by_model[(self.agent, self.lane_model)] = per_model[
                self.lane_model
            ]
        return self

    def __exit__(self, *exc: object) -> None:
        for ws in self.workspaces:
            del self.runner.state.session_active[ws]
        if self.lane_full:
            self.runner.state.lanes.by_model.pop((self.agent, self.lane_model or ""), None)


async def time_head(runner: Runner, agent: str, calls: int, expected: str | None) -> float:
    """Median microseconds of the drain's pick of `agent`'s next run (what `claim_next`
    asks of each agent, read only), checking the pick each time."""
    samples = []
    for _ in range(calls):
        now = time.time()
        t0 = time.perf_counter_ns()
        pick = Pick(agent, runner.state.busy_workspaces(), runner.scheduler.full_models(agent))
        head, _ = await runner.queue.store.read(partial(pick_in, pick=pick, now=now))
        samples.append((time.perf_counter_ns() - t0) / 1000)
        picked = head["id"] if head else None
        if picked != expected:
            raise BenchError(f"the pick found {picked}, expected {expected}")
    return statistics.median(samples)


async def bench_head(profile: Profile, tmp: Path) -> list[Result]:
    small_n, big_n = profile.head_small, profile.head_big
    calls = profile.head_calls
    results: list[Result] = []
    async with (
        bench_hub(tmp, "head-small", frozen=True) as small,
        bench_hub(tmp, "head-big", frozen=True) as big,
    ):
        rs, rb = runner_of(small), runner_of(big)
        if not (rs.state.frozen and rb.state.frozen):
            raise BenchError("the queue hubs are not frozen")
        t0 = time.perf_counter()
        order_s = await fill_queue(small, "noop", [(None, small_n)])
        order_b = await fill_queue(big, "noop", [(None, big_n)])
        order_m = await fill_queue(big, "multi", [("m1", HEAD_BLOCKED_MANY), ("m2", 64)])
        fill_s = time.perf_counter() - t0

        def row(name: str, goal: str, blocked: int, base: list[float], subj: list[float]) -> Result:
            ratio = ratio_of(base, subj)
            return Result(
                name=name,
                unit="us",
                goal=goal,
                baseline=statistics.median(base),
                fleetbus=statistics.median(subj),
                ratio=ratio,
                met=ratio <= 2 if goal == "<= 2x" else None,
                rounds={"baseline": base, "fleetbus": subj},
                extra={"calls_per_round": calls, "blocked_heads": blocked, "fill_s": fill_s},
            )

        def head_timer(
            runner: Runner,
            order: list[tuple[str, str, str | None]],
            blocked: int,
            n_calls: int,
            agent: str = "noop",
            lane_model: str | None = None,
        ) -> Callable[[int], Awaitable[float]]:
            async def timed(_r: int) -> float:
                with Blocked(runner, agent, order, blocked, lane_model=lane_model) as b:
                    return await time_head(runner, agent, n_calls, b.expected)

            return timed

        async def compare(
            a: Callable[[int], Awaitable[float]], b: Callable[[int], Awaitable[float]]
        ) -> tuple[list[float], list[float]]:
            await a(0)  # warm up
            await b(0)
            return await interleave(profile.rounds, a, b)

        # the same pick from a short and from a long queue
        base, subj = await compare(
            head_timer(rs, order_s, 0, calls), head_timer(rb, order_b, 0, calls)
        )
        results.append(
            row(f"next-run pick, {small_n:,} vs {big_n:,} queued", "<= 2x", 0, base, subj)
        )
        # the first page of heads all blocked by a busy session: the pick reads a second page
        if small_n > HEAD_BLOCKED_PAGE:
            base, subj = await compare(
                head_timer(rs, order_s, HEAD_BLOCKED_PAGE, calls),
                head_timer(rb, order_b, HEAD_BLOCKED_PAGE, calls),
            )
            results.append(
                row(
                    f"  same, first {HEAD_BLOCKED_PAGE} heads session-busy",
                    "info",
                    HEAD_BLOCKED_PAGE,
                    base,
                    subj,
                )
            )
        # paging cost: the first 1,024 queued runs of an agent wait for a full model lane
        base, subj = await compare(
            head_timer(rb, order_m, 0, calls, "multi", "m1"),
            head_timer(rb, order_m, HEAD_BLOCKED_MANY, max(10, calls // 10), "multi", "m1"),
        )
        results.append(
            row(
                f"  {HEAD_BLOCKED_MANY:,} heads behind a full model lane vs none",
                "info",
                HEAD_BLOCKED_MANY,
                base,
                subj,
            )
        )

        # runner.dispatch into each frozen queue (the answer carries the queue position)
        k = profile.queue_dispatches
        counter = {"small": 0, "big": 0}

        async def into(hub: Hub, key: str) -> float:
            runner = runner_of(hub)
            samples = []
            for _ in range(k):
                i = counter[key]
                counter[key] += 1
                expected = runner.queued_total + 1  # every queued run is medium priority
                t0 = time.perf_counter()
                res = await dispatch(hub, "noop", f"dq/{key}/d{i}")
                samples.append((time.perf_counter() - t0) * 1e6)
                if res.status != "queued" or res.queue_position != expected:
                    raise BenchError(
                        f"dispatch into a frozen queue: {res.status}, "
                        f"position {res.queue_position}, expected {expected}"
                    )
            return statistics.median(samples)

        async def q_base(_r: int) -> float:
            return await into(small, "small")

        async def q_subj(_r: int) -> float:
            return await into(big, "big")

        base, subj = await interleave(profile.rounds, q_base, q_subj)
        results.append(
            Result(
                name=f"  runner.dispatch into a frozen queue of {small_n:,} vs {big_n:,}",
                unit="us",
                goal="info",
                baseline=statistics.median(base),
                fleetbus=statistics.median(subj),
                ratio=ratio_of(base, subj),
                met=None,
                rounds={"baseline": base, "fleetbus": subj},
                extra={"dispatches_per_round": k},
            )
        )
        if rs.active or rb.active:
            raise BenchError("a frozen hub started a run")
    return results


# -- report ------------------------------------------------------------------------------------
def fmt(value: float, unit: str) -> str:
    if math.isnan(value):
        return "-"
    if unit == "runs/s":
        return f"{value:.0f}/s"
    if unit == "ms":
        return f"{value:.1f}ms"
    if unit == "us":
        return f"{value / 1000:.2f}ms" if value >= 10_000 else f"{value:.0f}us"
    return f"{value:g}{unit}"


def table(results: list[Result]) -> str:
    head = ("name", "baseline", "fleetbus", "ratio", "goal", "met?")
    rows = [head]
    for r in results:
        met = "INVALID" if not r.valid else ("-" if r.met is None else ("yes" if r.met else "NO"))
        rows.append(
            (
                r.name,
                fmt(r.baseline, r.unit),
                fmt(r.fleetbus, r.unit),
                "-" if math.isnan(r.ratio) else f"{r.ratio:.2f}x",
                r.goal,
                met,
            )
        )
    return aligned(rows)


def details(results: list[Result]) -> list[str]:
    out = []
    for r in results:
        x = r.extra
        if "loop_cpu_ms_per_run" in x:
            cpu = x["loop_cpu_ms_per_run"]
            out.append(
                f"{r.name.strip()}: dispatching took {x['dispatch_phase_s']:.2f}s "
                f"({x['dispatch_ms_mean']:.2f}ms each, {x['queued_at_dispatch']:.0f} queued at "
                f"dispatch); event-loop thread CPU per run: baseline {cpu['baseline']:.2f}ms, "
                f"fleetbus {cpu['fleetbus']:.2f}ms"
            )
        for label, s in x.get("latency", {}).items():
            out.append(f"  {label:<48} p50 {s['p50_ms']:7.2f}ms  p99 {s['p99_ms']:7.2f}ms")
        for problem in r.problems:
            out.append(f"{r.name.strip()}: INVALID: {problem}")
    return out


BENCHES: dict[str, tuple[list[tuple[str, str, str]], Callable[[Profile, Path], Awaitable[Any]]]] = {
    "throughput": (
        [
            ("throughput, no-op runs", "runs/s", ">= 0.7x"),
            ("  floor: the runner's spawn + wait alone", "runs/s", "info"),
        ],
        bench_throughput,
    ),
    "latency": (
        [
            ("dispatch -> running (free lane), p99", "ms", "p99 <= 50ms"),
            ("agent exit -> run_completed, p99", "ms", "p99 <= 50ms"),
        ],
        bench_latency,
    ),
    "head": ([("next-run pick, short vs long queue", "us", "<= 2x")], bench_head),
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts (CI smoke run)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--rounds", type=int, default=None, help="override the round count")
    parser.add_argument("--runs", type=int, default=None, help="override the throughput run count")
    parser.add_argument(
        "--only", choices=tuple(BENCHES), action="append", help="run only this (repeatable)"
    )
    args = parser.parse_args(argv)
    profile = QUICK if args.quick else FULL
    if args.rounds:
        profile = Profile(**{**asdict(profile), "rounds": args.rounds})
    if args.runs:
        profile = Profile(**{**asdict(profile), "runs": args.runs})
    chosen = args.only or list(BENCHES)

    async def run_one(key: str, tmp: Path) -> list[Result]:
        placeholders, bench = BENCHES[key]
        problems: list[str] = []
        try:
            got = await bench(profile, tmp)
            return got if isinstance(got, list) else [got]
        except* BenchError as group:  # task groups wrap it
            problems.extend(str(e) for e in group.exceptions)
        return [Result.invalid(n, u, g, "; ".join(problems)) for n, u, g in placeholders]

    async def run_all() -> list[Result]:
        results = []
        for key in chosen:
            t0 = time.perf_counter()
            log(f"bench {key} ...")
            with tempfile.TemporaryDirectory(prefix="fbrun-") as tmp:
                res = await run_one(key, Path(tmp))
                try:
                    assert_no_leftovers(Path(tmp))
                except BenchError as e:
                    for r in res:
                        r.valid, r.met = False, False
                        r.problems.append(str(e))
            verdicts = ", ".join(f"{r.ratio:.2f}x" if r.valid else "INVALID" for r in res)
            log(f"bench {key}: {verdicts} in {time.perf_counter() - t0:.1f}s")
            results.extend(res)
        return results

    started = time.perf_counter()
    results = anyio.run(run_all)
    elapsed = time.perf_counter() - started

    if args.json:
        ratio = "median of per-round fleetbus/baseline ratios"
        print(json_report(args.quick, profile, elapsed, results, ratio=ratio))
    else:
        print(table(results))
        for line in details(results):
            print(line)
        print(
            f"({profile.rounds} interleaved rounds; ratio = median of per-round ratios "
            f"(latency rows: of p50s, like for like; their figures are p99s); "
            f"python {platform.python_version()}; {os.cpu_count()} CPUs; {elapsed:.1f}s)"
        )
    return 0 if all(r.valid for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
