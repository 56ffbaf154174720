"""Benchmarks of `fleetbus serve` (MCP over stdio) against a bare MCPServer, in the same run.

Run it as a script (it is not a pytest test)::

    python tests/bench/bench_mcp.py            # full run, under 3 minutes
    python tests/bench/bench_mcp.py --quick    # smoke run, under 30 seconds
    python tests/bench/bench_mcp.py --json     # the results as JSON on stdout

Every server is a real stdio subprocess (`sys.executable -m fleetbus.server serve`, with
FLEETBUS_HOME and XDG_CONFIG_HOME in a fresh temporary directory) driven by the SDK's
`ClientSession` over `stdio_client`, after the `initialize()` handshake. Two subjects:
`serve` talking to a hub it starts as a separate process ("hub"), and `--embedded serve`
running the hub in-process ("embedded").

1. `tools/call runner_status {"limit": 0}` round trip vs a bare `MCPServer` (a script
   written to the temp dir at run time) whose one tool `runner_status(limit: int = 0)`
   returns a constant: the subject's own answer, taken first, published with the
   subject's own output schema (so the client checks both answers against the same
   schema). Same arguments, same client. Baseline, hub and embedded alternate in rounds
   (all orders in turn); the ratio is the median of the per-round p50 ratios (goal:
   <= 1.5x); p50/p99 are over every call.
2. `tools/call runner_dispatch` of a no-op agent (`true`, free lane, a new workspace
   each time) until the `notifications/claude/channel` event saying `running`, and the
   one saying `completed`, for that run_id reaches the client (goal: completed p99 <=
   100 ms). Samples are isolated: a session's next dispatch waits until its coalescing
   window (server/channels.py `Coalescer`) has closed after its last event, and at least
   two windows (1 s) after its previous dispatch; the two subjects alternate.
   The reference column is when the hub itself recorded the transition (the run's
   `started_at` / `ended_at` from `runner.status`, wall clock, same machine), so
   "fleetbus - reference" is the time spent getting the event to the client.
   For information, bursts of back-to-back dispatches to an idle session (no event for
   four windows) show the coalescing: the first event goes out at once, the rest wait for
   the window to close and come as one event (one status per run, so some runs of a burst
   are never announced `running`).

Timings are reported, never asserted; the exit status is 1 only when a correctness check
fails (an error result, a wrong payload, a missing event, a run that did not complete, a
server that did not exit when its stdin closed, a process left running).
"""

from __future__ import annotations

import argparse
import gc
import importlib
import inspect
import itertools
import json
import math
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import anyio
from common import BenchError, aligned, json_report, leftovers, log, percentile
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client import NotificationBinding
from pydantic import BaseModel

from fleetbus.server.mcp_server import CHANNEL_METHOD, FleetMCP

CONFIG = """\
agents:
  noop: {command: ["true"], prompt: stdin, concurrency: 4}
dispatch: {session: {debounce_ms: 0}}
"""
STATUS_ARGS: dict[str, Any] = {"limit": 0}
# the coalescing window `fleetbus serve` uses (FleetMCP's default)
WINDOW = float(inspect.signature(FleetMCP.__init__).parameters["coalesce_window"].default)
QUIET_MARGIN = 0.05  # s past the window before a session counts as quiet again
SPACING = 2 * WINDOW  # s at least between two isolated dispatches of one session
IDLE = 4 * WINDOW  # s without an event before a burst: the session is idle
EVENT_TIMEOUT = 15.0  # an event not received by then is missing
CALL_TIMEOUT = 30.0
START_TIMEOUT = 60.0
EXIT_GRACE = 2.0  # stdio_client kills a server that has not exited this long after EOF
GOAL_STATUS_RATIO = 1.5
GOAL_EVENT_P99_MS = 100.0
ENDED = ("completed", "failed", "blocked", "cancelled", "timeout")
# one part of a coalesced event's content: "<run_id> <status>: <line>"
PART = re.compile(r"\b(r[0-9a-f]{8,}) (queued|running|" + "|".join(ENDED) + r"):")

BASELINE_SCRIPT = '''\
"""The baseline: a bare MCPServer whose one tool returns a constant, with the subject's
output schema."""
import json
from typing import Any

from mcp.server import MCPServer
from pydantic import BaseModel, ConfigDict

SCHEMA: dict[str, Any] = json.loads({schema!r})


class Status(BaseModel):
    """The subject's answer as it is, published with the subject's output schema."""

    model_config = ConfigDict(extra="allow")

    @classmethod
    def __get_pydantic_json_schema__(cls, core_schema: Any, handler: Any) -> dict[str, Any]:
        return SCHEMA


STATUS = Status.model_validate(json.loads({payload!r}))

server = MCPServer("bench-baseline")


@server.tool()
async def runner_status(limit: int = 0) -> Status:
    """The runner's status (a constant)."""
    return STATUS


if __name__ == "__main__":
    server.run()
'''


@dataclass(frozen=True)
class Profile:
    rounds: int
    status_calls: int  # per side and round
    dispatch_samples: int  # isolated dispatches per subject
    bursts: int  # per subject
    burst_size: int


FULL = Profile(rounds=12, status_calls=50, dispatch_samples=80, bursts=4, burst_size=4)
QUICK = Profile(rounds=6, status_calls=20, dispatch_samples=8, bursts=1, burst_size=4)


@dataclass
class Result:
    name: str
    unit: str
    goal: str  # e.g. "p50 <= 1.5x", "p99 <= 100ms", "info"
    baseline_p50: float  # the baseline or the reference figure
    baseline_p99: float
    p50: float
    p99: float
    ratio: float  # p50 ratio (median of per-round ratios); nan when there is no baseline
    met: bool | None  # None: no goal (information)
    valid: bool = True
    problems: list[str] = field(default_factory=list)
    rounds: dict[str, list[float]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def leaves(exc: BaseException) -> list[BaseException]:
    """The exceptions inside (nested) exception groups."""
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for e in exc.exceptions for leaf in leaves(e)]
    return [exc]


def ms(ns: int) -> float:
    return ns / 1e6


# -- the servers -----------------------------------------------------------------------------
class ChannelIn(BaseModel):
    content: str
    meta: dict[str, str] = {}


@dataclass
class Event:
    run_id: str
    status: str
    t: int  # perf_counter_ns when the client's handler ran
    coalesced: int  # how many events the notification stood for (1: not coalesced)


class Side:
    """One stdio MCP server and the client session talking to it."""

    def __init__(self, name: str, root: Path, argv: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.root = root
        self.argv = argv
        self.env = env
        self.session: ClientSession | None = None
        self.output_schemas: dict[str, dict[str, Any] | None] = {}
        self.startup_ms = math.nan
        self.exit_ms = math.nan
        self.events: dict[str, list[Event]] = {}
        self.notifications = 0
        self.last_note = 0  # perf_counter_ns of the last channel notification
        self.last_dispatch = 0  # perf_counter_ns of the last dispatch sent
        self.unparsed: list[dict[str, Any]] = []
        self._wake = anyio.Event()

    @property
    def errlog_path(self) -> Path:
        return self.root / f"{self.name}.stderr"

    def stderr_tail(self, lines: int = 5) -> str:
        try:
            text = self.errlog_path.read_text(errors="replace").strip().splitlines()
        except OSError:
            return ""
        return " | ".join(text[-lines:])

    async def on_channel(self, params: ChannelIn) -> None:
        t = time.perf_counter_ns()
        self.notifications += 1
        self.last_note = t
        meta = params.meta
        if "run_id" in meta and "status" in meta:
            found = [(meta["run_id"], meta["status"])]
            n = 1
        else:  # a coalesced event: one "<run_id> <status>: ..." part per event
            found = PART.findall(params.content)
            n = int(meta.get("coalesced", "1") or 1)
            if not found:
                self.unparsed.append(params.model_dump())
        for run_id, status in found:
            self.events.setdefault(run_id, []).append(Event(run_id, status, t, n))
        self._wake.set()

    def event(self, run_id: str, status: str) -> Event | None:
        for e in self.events.get(run_id, []):
            if e.status == status:
                return e
        return None

    def ended(self, run_id: str) -> Event | None:
        for e in self.events.get(run_id, []):
            if e.status in ENDED:
                return e
        return None

    async def wait_ended(self, run_id: str) -> Event:
        with anyio.move_on_after(EVENT_TIMEOUT):
            while (e := self.ended(run_id)) is None:
                self._wake = anyio.Event()
                await self._wake.wait()
            return e
        raise BenchError(
            f"{self.name}: no channel event saying run {run_id} ended within "
            f"{EVENT_TIMEOUT:g}s (got {[x.status for x in self.events.get(run_id, [])]})"
        )

    async def wait_quiet(self, idle: float = 0.0) -> None:
        """Until the session's coalescing window has closed after its last event, and at
        least SPACING after its last dispatch (with `idle`: that long after its last event)."""
        ready = max(
            self.last_note + int(max(WINDOW + QUIET_MARGIN, idle) * 1e9),
            self.last_dispatch + int(SPACING * 1e9),
        )
        delay = (ready - time.perf_counter_ns()) / 1e9
        if delay > 0:
            await anyio.sleep(delay)

    async def call(self, tool: str, arguments: dict[str, Any]) -> Any:
        assert self.session is not None
        try:
            with anyio.fail_after(CALL_TIMEOUT):
                res = await self.session.call_tool(tool, arguments)
        except TimeoutError:
            raise BenchError(
                f"{self.name}: no answer to {tool} within {CALL_TIMEOUT:g}s ({self.stderr_tail()})"
            ) from None
        if res.is_error:
            text = res.content[0].text if res.content else ""  # type: ignore[union-attr]
            raise BenchError(f"{self.name}: {tool} {arguments} returned an error: {text}")
        return res

    @asynccontextmanager
    async def running(self) -> AsyncIterator[Side]:
        params = StdioServerParameters(
            command=sys.executable, args=self.argv, env=self.env, cwd=str(self.root)
        )
        binding = NotificationBinding(
            method=CHANNEL_METHOD, params_type=ChannelIn, handler=self.on_channel
        )
        t_exit: int | None = None
        with open(self.errlog_path, "w") as errlog:
            t0 = time.perf_counter_ns()
            try:
                async with AsyncExitStack() as stack:
                    read, write = await stack.enter_async_context(stdio_client(params, errlog))
                    session = await stack.enter_async_context(
                        ClientSession(read, write, notification_bindings=[binding])
                    )
                    try:
                        with anyio.fail_after(START_TIMEOUT):
                            await session.initialize()
                            # the client now knows (and validates against) the output schemas
                            tools = (await session.list_tools()).tools
                    except TimeoutError:
                        raise BenchError(
                            f"{self.name}: no answer to initialize within {START_TIMEOUT:g}s "
                            f"({self.stderr_tail()})"
                        ) from None
                    self.output_schemas = {t.name: t.output_schema for t in tools}
                    self.startup_ms = ms(time.perf_counter_ns() - t0)
                    self.session = session
                    try:
                        yield self
                    finally:
                        self.session = None
                        t_exit = time.perf_counter_ns()  # closing stdin, waiting for the exit
            finally:
                if t_exit is not None:
                    self.exit_ms = ms(time.perf_counter_ns() - t_exit)


def bench_env(root: Path, name: str) -> dict[str, str]:
    """The environment of one server: its own home and config, never the user's."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETBUS_")}
    env["FLEETBUS_HOME"] = str(root / name / "home")
    env["XDG_CONFIG_HOME"] = str(root / name / "config")
    env["XDG_STATE_HOME"] = str(root / name / "state")
    config = root / name / "config" / "fleetbus" / "fleetbus.yaml"
    config.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(CONFIG)
    return env


def fleetbus_cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "fleetbus.server", *args]


def structured(res: Any) -> dict[str, Any]:
    data = res.structured_content
    if not isinstance(data, dict):
        raise BenchError(f"no structured content in {res!r}")
    return data


def wire_size(res: Any) -> int:
    return len(json.dumps(res.model_dump(by_alias=True, mode="json", exclude_none=True)))


def validation_us(schema: dict[str, Any] | None, data: Any, n: int = 300) -> float:
    """What the client's output-schema check of one answer costs (a compiled validator, as
    ClientSession caches it), in microseconds: part of every round trip."""
    if schema is None:
        return 0.0
    # jsonschema ships no type stubs
    validator_for = importlib.import_module("jsonschema.validators").validator_for

    validator = validator_for(schema)(schema)
    for _ in range(20):
        list(validator.iter_errors(data))
    t0 = time.perf_counter_ns()
    for _ in range(n):
        list(validator.iter_errors(data))
    return (time.perf_counter_ns() - t0) / n / 1000


# -- 1. runner_status round trip -------------------------------------------------------------
async def bench_status(
    profile: Profile, base: Side, subjects: list[Side], payload: dict[str, Any]
) -> list[Result]:
    sides = [base, *subjects]
    samples: dict[str, list[float]] = {s.name: [] for s in sides}
    per_round: dict[str, list[float]] = {s.name: [] for s in sides}
    sizes = {}
    for side in sides:  # correctness, and the wire size of one answer
        res = await side.call("runner_status", STATUS_ARGS)
        if structured(res) != payload:
            raise BenchError(f"{side.name}: runner_status answered {structured(res)!r}")
        sizes[side.name] = wire_size(res)

    async def one_round(side: Side, n: int, sink: list[float] | None) -> float:
        assert side.session is not None
        call = side.session.call_tool
        got = []
        with anyio.move_on_after(CALL_TIMEOUT) as scope:  # one scope per round, not per call
            for _ in range(n):
                t0 = time.perf_counter_ns()
                res = await call("runner_status", STATUS_ARGS)
                got.append(ms(time.perf_counter_ns() - t0))
                if res.is_error:
                    raise BenchError(f"{side.name}: runner_status failed: {res.content!r}")
        if scope.cancelled_caught:
            raise BenchError(f"{side.name}: {n} runner_status calls took over {CALL_TIMEOUT:g}s")
        if structured(res) != payload:
            raise BenchError(f"{side.name}: runner_status answered {structured(res)!r}")
        if sink is not None:
            sink.extend(got)
        return statistics.median(got)

    for side in sides:  # warm up
        await one_round(side, max(20, profile.status_calls // 2), None)
    orders = list(itertools.permutations(range(len(sides))))
    for r in range(profile.rounds):
        for i in orders[r % len(orders)]:
            side = sides[i]
            gc.collect()
            per_round[side.name].append(
                await one_round(side, profile.status_calls, samples[side.name])
            )

    check_us = {
        side.name: validation_us(side.output_schemas.get("runner_status"), payload)
        for side in sides
    }
    results = []
    b = base.name
    for s in subjects:
        ratio = statistics.median(
            x / y for x, y in zip(per_round[s.name], per_round[b], strict=True)
        )
        results.append(
            Result(
                name=f"runner_status round trip ({s.name})",
                unit="ms",
                goal=f"p50 <= {GOAL_STATUS_RATIO:g}x",
                baseline_p50=percentile(samples[b], 50),
                baseline_p99=percentile(samples[b], 99),
                p50=percentile(samples[s.name], 50),
                p99=percentile(samples[s.name], 99),
                ratio=ratio,
                met=ratio <= GOAL_STATUS_RATIO,
                rounds={"baseline": per_round[b], s.name: per_round[s.name]},
                extra={
                    "calls_per_side": len(samples[s.name]),
                    "p99_ratio": percentile(samples[s.name], 99) / percentile(samples[b], 99),
                    "answer_bytes": {"baseline": sizes[b], s.name: sizes[s.name]},
                    "client_validation_us": {"baseline": check_us[b], s.name: check_us[s.name]},
                },
            )
        )
    return results


# -- 2. dispatch -> channel events -----------------------------------------------------------
@dataclass
class Sample:
    run_id: str
    returned_ms: float  # tools/call runner_dispatch answered
    running_ms: float  # the `running` event reached the client
    ended_ms: float  # the `completed` event reached the client
    hub_started_ms: float  # the hub's started_at (wall clock) after the dispatch was sent
    hub_ended_ms: float  # the hub's ended_at
    running_coalesced: int
    ended_coalesced: int


async def dispatch(side: Side, workspace: str) -> tuple[str, int, float, float]:
    """(run_id, perf_counter_ns and wall clock when sent, ms until the call returned)."""
    wall0 = time.time()
    t0 = side.last_dispatch = time.perf_counter_ns()
    res = await side.call(
        "runner_dispatch", {"agent": "noop", "prompt": "bench", "workspace": workspace}
    )
    returned = ms(time.perf_counter_ns() - t0)
    data = structured(res)
    if data.get("status") != "running":
        raise BenchError(f"{side.name}: dispatch to a free lane answered {data!r}")
    return data["run_id"], t0, wall0, returned


async def settle(
    side: Side, run_id: str, t0: int, wall0: float, returned: float, *, isolated: bool
) -> Sample:
    ended = await side.wait_ended(run_id)
    if ended.status != "completed":
        raise BenchError(f"{side.name}: run {run_id} ended {ended.status}")
    running = side.event(run_id, "running")
    # a coalesced event keeps one status per run: within a burst, `completed` may replace
    # `running`; an isolated run's `running` is the first event, sent at once
    if running is None and isolated:
        raise BenchError(f"{side.name}: no `running` event for run {run_id}")
    status = structured(await side.call("runner_status", {"run_id": run_id, "limit": 1}))
    runs = status.get("runs") or []
    if not runs or runs[0]["status"] != "completed" or runs[0]["exit_code"] != 0:
        raise BenchError(f"{side.name}: runner_status for {run_id}: {runs!r}")
    run = runs[0]
    return Sample(
        run_id=run_id,
        returned_ms=returned,
        running_ms=ms(running.t - t0) if running is not None else math.nan,
        ended_ms=ms(ended.t - t0),
        hub_started_ms=(run["started_at"] - wall0) * 1000,
        hub_ended_ms=(run["ended_at"] - wall0) * 1000,
        running_coalesced=running.coalesced if running is not None else 0,
        ended_coalesced=ended.coalesced,
    )


async def isolated_samples(profile: Profile, subjects: list[Side]) -> dict[str, list[Sample]]:
    got: dict[str, list[Sample]] = {s.name: [] for s in subjects}
    for i in range(profile.dispatch_samples):
        # always the same order: each side's window closes while the other side measures
        for side in subjects:
            await side.wait_quiet()
            gc.collect()
            run_id, t0, wall0, returned = await dispatch(side, f"iso-{i}")
            got[side.name].append(await settle(side, run_id, t0, wall0, returned, isolated=True))
    return got


async def burst_samples(profile: Profile, side: Side) -> tuple[list[Sample], list[int]]:
    samples: list[Sample] = []
    notes: list[int] = []
    for b in range(profile.bursts):
        await side.wait_quiet(IDLE)
        before = side.notifications
        sent = [await dispatch(side, f"burst-{b}-{k}") for k in range(profile.burst_size)]
        for run_id, t0, wall0, returned in sent:
            samples.append(await settle(side, run_id, t0, wall0, returned, isolated=False))
        await side.wait_quiet()  # every event of the burst is out
        notes.append(side.notifications - before)
    return samples, notes


def event_results(side: Side, samples: list[Sample], label: str, goal: bool) -> list[Result]:
    seen = [s for s in samples if not math.isnan(s.running_ms)]  # `running` delivered
    running = [s.running_ms for s in seen]
    ended = [s.ended_ms for s in samples]
    hub_started = [s.hub_started_ms for s in seen]
    hub_ended = [s.hub_ended_ms for s in samples]
    held = [s.ended_ms - s.hub_ended_ms for s in samples]
    common = {
        "samples": len(samples),
        "dispatch_returned_p50_ms": percentile([s.returned_ms for s in samples], 50),
        "dispatch_returned_p99_ms": percentile([s.returned_ms for s in samples], 99),
        "ended_coalesced": sum(s.ended_coalesced > 1 for s in samples),
        "running_coalesced": sum(s.running_coalesced > 1 for s in samples),
        "running_superseded": len(samples) - len(seen),
    }
    p99 = percentile(ended, 99)
    return [
        Result(
            name=f"dispatch -> running event ({side.name}{label})",
            unit="ms",
            goal="info",
            baseline_p50=percentile(hub_started, 50),
            baseline_p99=percentile(hub_started, 99),
            p50=percentile(running, 50),
            p99=percentile(running, 99),
            ratio=math.nan,
            met=None,
            extra={
                **common,
                "event_after_hub_p50_ms": percentile(
                    [s.running_ms - s.hub_started_ms for s in seen], 50
                ),
                "event_after_hub_p99_ms": percentile(
                    [s.running_ms - s.hub_started_ms for s in seen], 99
                ),
            },
        ),
        Result(
            name=f"dispatch -> completed event ({side.name}{label})",
            unit="ms",
            goal=f"p99 <= {GOAL_EVENT_P99_MS:g}ms" if goal else "info",
            baseline_p50=percentile(hub_ended, 50),
            baseline_p99=percentile(hub_ended, 99),
            p50=percentile(ended, 50),
            p99=p99,
            ratio=math.nan,
            met=(p99 <= GOAL_EVENT_P99_MS) if goal else None,
            extra={
                **common,
                "event_after_hub_p50_ms": percentile(held, 50),
                "event_after_hub_p99_ms": percentile(held, 99),
                "coalescing_window_ms": WINDOW * 1000,
            },
        ),
    ]


async def bench_events(profile: Profile, subjects: list[Side]) -> list[Result]:
    iso = await isolated_samples(profile, subjects)
    results = []
    for side in subjects:
        results.extend(event_results(side, iso[side.name], "", goal=True))
    for side in subjects:
        if profile.bursts:
            samples, notes = await burst_samples(profile, side)
            rows = event_results(side, samples, f", bursts of {profile.burst_size}", goal=False)
            for row in rows:
                row.extra["notifications_per_burst"] = notes
                row.extra["first_of_burst_running_ms"] = [
                    s.running_ms for s in samples[:: profile.burst_size]
                ]
                row.extra["first_of_burst_completed_ms"] = [
                    s.ended_ms for s in samples[:: profile.burst_size]
                ]
            results.extend(rows)
    for side in subjects:
        if side.unparsed:
            raise BenchError(f"{side.name}: channel events naming no run: {side.unparsed[:2]!r}")
    return results


# -- running it all --------------------------------------------------------------------------


async def stop_hub(side: Side) -> str:
    """`fleetbus stop` with the side's home; its answer."""
    proc = await anyio.run_process(
        fleetbus_cli("stop"), env=side.env, cwd=str(side.root), check=False
    )
    out = (proc.stdout + proc.stderr).decode(errors="replace").strip()
    if proc.returncode != 0:
        raise BenchError(f"{side.name}: fleetbus stop exited {proc.returncode}: {out}")
    return out


async def run_benches(profile: Profile, only: list[str]) -> tuple[list[Result], dict[str, Any]]:
    results: list[Result] = []
    info: dict[str, Any] = {}
    problems: list[str] = []
    with tempfile.TemporaryDirectory(prefix="fbmcp-") as tmp:
        root = Path(tmp)
        hub = Side("hub", root, ["-m", "fleetbus.server", "serve"], bench_env(root, "hub"))
        emb = Side(
            "embedded",
            root,
            ["-m", "fleetbus.server", "--embedded", "serve"],
            bench_env(root, "embedded"),
        )
        subjects = [hub, emb]
        base: Side | None = None
        try:
            async with AsyncExitStack() as stack:
                for side in subjects:
                    await stack.enter_async_context(side.running())
                    log(f"  {side.name}: serve answered initialize in {side.startup_ms:.0f}ms")
                payload = structured(await hub.call("runner_status", STATUS_ARGS))
                script = root / "baseline_server.py"
                schema = hub.output_schemas.get("runner_status")
                script.write_text(
                    BASELINE_SCRIPT.format(payload=json.dumps(payload), schema=json.dumps(schema))
                )
                base = Side("baseline", root, [str(script)], bench_env(root, "baseline"))
                await stack.enter_async_context(base.running())
                log(f"  baseline: MCPServer answered initialize in {base.startup_ms:.0f}ms")
                for side in [*subjects, base]:  # every client checks against one schema
                    if side.output_schemas.get("runner_status") != schema:
                        raise BenchError(f"{side.name}: runner_status has another output schema")
                if "status" in only:
                    t0 = time.perf_counter()
                    log("bench status ...")
                    rows = await bench_status(profile, base, subjects, payload)
                    log(
                        f"bench status: {', '.join(f'{r.ratio:.2f}x' for r in rows)} "
                        f"in {time.perf_counter() - t0:.1f}s"
                    )
                    results.extend(rows)
                if "events" in only:
                    t0 = time.perf_counter()
                    log("bench events ...")
                    rows = await bench_events(profile, subjects)
                    log(f"bench events: in {time.perf_counter() - t0:.1f}s")
                    results.extend(rows)
        except* BenchError as group:
            problems.extend(str(e) for e in leaves(group))
        finally:
            with anyio.CancelScope(shield=True):

                async def stop(side: Side) -> None:
                    try:
                        info[f"{side.name}_stop"] = await stop_hub(side)
                    except BenchError as e:
                        problems.append(str(e))

                async with anyio.create_task_group() as tg:
                    for side in subjects:
                        tg.start_soon(stop, side)
                left = leftovers(root)
                if left:
                    problems.append(f"processes still running after the bench (killed): {left[:5]}")
        for side in [*subjects, *([base] if base is not None else [])]:
            info[f"{side.name}_startup_ms"] = side.startup_ms
            info[f"{side.name}_exit_ms"] = side.exit_ms
            if side.exit_ms >= EXIT_GRACE * 1000:
                problems.append(
                    f"{side.name}: the server did not exit within {EXIT_GRACE:g}s of its stdin "
                    f"closing ({side.exit_ms:.0f}ms; stdio_client killed it)"
                )
    if problems:
        nan = math.nan
        results.append(
            Result("(correctness)", "ms", "-", nan, nan, nan, nan, nan, False, False, problems)
        )
    return results, info


# -- report ----------------------------------------------------------------------------------
def fmt_pair(p50: float, p99: float) -> str:
    if math.isnan(p50):
        return "-"
    return f"{p50:.2f} / {p99:.2f}" if p99 < 10 else f"{p50:.1f} / {p99:.1f}"


def table(results: list[Result]) -> str:
    head = (
        "measurement",
        "baseline p50 / p99 ms",
        "fleetbus p50 / p99 ms",
        "ratio",
        "goal",
        "met?",
    )
    rows = [head]
    for r in results:
        if r.name == "(correctness)":
            continue
        met = "INVALID" if not r.valid else ("-" if r.met is None else ("yes" if r.met else "NO"))
        rows.append(
            (
                r.name,
                fmt_pair(r.baseline_p50, r.baseline_p99),
                fmt_pair(r.p50, r.p99),
                "-" if math.isnan(r.ratio) else f"{r.ratio:.2f}x",
                r.goal,
                met,
            )
        )
    return aligned(rows)


def notes(results: list[Result], info: dict[str, Any]) -> list[str]:
    out = []
    for r in results:
        x = r.extra
        if "answer_bytes" in x:
            size = next(v for k, v in x["answer_bytes"].items() if k != "baseline")
            check = next(v for k, v in x["client_validation_us"].items() if k != "baseline")
            out.append(
                f"{r.name}: p99 ratio {x['p99_ratio']:.2f}x over {x['calls_per_side']} calls; "
                f"answer bytes baseline {x['answer_bytes']['baseline']}, fleetbus {size}; "
                f"client output-schema check per answer baseline "
                f"{x['client_validation_us']['baseline']:.0f}us, fleetbus {check:.0f}us"
            )
        elif "event_after_hub_p50_ms" in x:
            line = (
                f"{r.name}: event - hub record p50 {x['event_after_hub_p50_ms']:.1f}ms "
                f"p99 {x['event_after_hub_p99_ms']:.1f}ms; dispatch call returned p50 "
                f"{x['dispatch_returned_p50_ms']:.1f}ms p99 {x['dispatch_returned_p99_ms']:.1f}ms; "
                f"{x['samples']} runs"
            )
            if "notifications_per_burst" in x and "completed" in r.name:
                line += f"; notifications per burst {x['notifications_per_burst']}"
            if "first_of_burst_running_ms" in x and "running" in r.name:
                firsts = ", ".join(f"{v:.0f}" for v in x["first_of_burst_running_ms"])
                line += f"; first run of each burst: running after {firsts}ms"
            coalesced = x["ended_coalesced"] if "completed" in r.name else x["running_coalesced"]
            if coalesced:
                line += f"; {coalesced} arrived inside a coalesced event"
            if x["running_superseded"] and "running" in r.name:
                line += (
                    f"; {x['running_superseded']} never announced `running` (a coalesced "
                    "event gave their `completed` only)"
                )
            out.append(line)
        for problem in r.problems:
            out.append(f"{r.name}: INVALID: {problem}")
    starts = ", ".join(
        f"{k.removesuffix('_startup_ms')} {v:.0f}ms"
        for k, v in info.items()
        if k.endswith("_startup_ms") and not math.isnan(v)
    )
    exits = ", ".join(
        f"{k.removesuffix('_exit_ms')} {v:.0f}ms"
        for k, v in info.items()
        if k.endswith("_exit_ms") and not math.isnan(v)
    )
    out.append(f"spawn -> initialize + tools/list: {starts}; stdin EOF -> exit: {exits}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts (CI smoke run)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--rounds", type=int, default=None, help="override the round count")
    parser.add_argument(
        "--samples", type=int, default=None, help="override the isolated dispatch count"
    )
    parser.add_argument(
        "--only",
        choices=("status", "events"),
        action="append",
        help="run only this measurement (repeatable)",
    )
    args = parser.parse_args(argv)
    profile = QUICK if args.quick else FULL
    if args.rounds:
        profile = replace(profile, rounds=args.rounds)
    if args.samples is not None:
        profile = replace(profile, dispatch_samples=args.samples)
    only = args.only or ["status", "events"]

    started = time.perf_counter()
    results, info = anyio.run(run_benches, profile, only)
    elapsed = time.perf_counter() - started

    if args.json:
        print(
            json_report(
                args.quick, profile, elapsed, results,
                coalescing_window_s=WINDOW,
                ratio="median of per-round fleetbus/baseline p50 ratios",
                reference="dispatch rows: the hub's own started_at / ended_at of the run",
                info=info,
            )
        )  # fmt: skip
    else:
        print(table(results))
        for line in notes(results, info):
            print(line)
        parts = []
        if "status" in only:
            parts.append(
                f"{profile.rounds} interleaved rounds x {profile.status_calls} calls per side; "
                "ratio = median of per-round p50 ratios"
            )
        if "events" in only:
            parts.append(
                f"{profile.dispatch_samples} isolated dispatches per subject, "
                f"{profile.bursts} bursts of {profile.burst_size}; coalescing window "
                f"{WINDOW * 1000:.0f}ms; dispatch rows: baseline = when the hub recorded it"
            )
        parts.append(f"python {platform.python_version()}; {elapsed:.1f}s")
        print(f"({'; '.join(parts)})")
    return 0 if all(r.valid for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
