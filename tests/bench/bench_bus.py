"""Benchmarks of the bus against raw baselines measured in the same run.

Run it as a script (it is not a pytest test)::

    python tests/bench/bench_bus.py            # full run, well under 2 minutes
    python tests/bench/bench_bus.py --quick    # smoke run, a few seconds
    python tests/bench/bench_bus.py --json     # the results as JSON on stdout

Three measurements, each next to its baseline:

1. `perform`: `Bus.perform` of a trivial validated async action vs a raw pluggy hook call
   with one implementation (microseconds per call; goal: ratio <= 1.5).
2. broadcast: one producer, 10 subscribers, `Bus.publish` vs `send_nowait` on 10 raw anyio
   memory streams (deliveries per second; goal: ratio >= 0.5). Both sides build one `Tick`
   per message, use the same buffer size (the message count, so nothing can be dropped)
   and yield to the consumers at the same pace; every subscriber must receive every message.
3. IPC: `HubClient.perform("hub.ping")` against an in-process hub vs a raw newline-delimited
   JSON echo over a Unix socket, with the same request bytes (round-trip latency;
   goal: ratio <= 1.5; p50/p99 per side are printed too).

Shared machines are noisy: baseline and fleetbus alternate in several rounds (ABBA order),
each ratio is the median of the per-round ratios, each side's figure the median over rounds.
Timings are reported, never asserted; the exit status is 1 only when a correctness check
fails (a wrong reply, a dropped or missing message).
"""

from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import anyio
import anyio.abc
import pluggy
from anyio.streams.buffered import BufferedByteReceiveStream
from common import BenchError, aligned, json_report, log, percentile
from pydantic import BaseModel

from fleetbus.bus.actions import make_spec
from fleetbus.bus.client import HubClient
from fleetbus.bus.core import Bus
from fleetbus.bus.hub import Hub
from fleetbus.bus.messages import Message, Subscription
from fleetbus.bus.wire import encode as fleetbus_encode

SUBSCRIBERS = 10
YIELD_EVERY = 64  # the producer yields to the consumers after this many messages
DELIVERY_TIMEOUT = 10.0  # a consumer still short of its messages by then means drops
MAX_LINE = 16 * 1024 * 1024


@dataclass(frozen=True)
class Profile:
    rounds: int
    perform_calls: int
    broadcast_messages: int
    ipc_calls: int


FULL = Profile(rounds=11, perform_calls=30_000, broadcast_messages=10_000, ipc_calls=1_500)
QUICK = Profile(rounds=5, perform_calls=3_000, broadcast_messages=1_000, ipc_calls=200)


@dataclass
class Result:
    name: str
    unit: str
    better: str  # "lower" or "higher"
    goal_op: str  # "<=" or ">="
    goal: float
    baseline: float
    fleetbus: float
    ratio: float
    met: bool
    valid: bool = True
    problems: list[str] = field(default_factory=list)
    rounds: dict[str, list[float]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


def now() -> int:
    return time.perf_counter_ns()


async def interleave(
    rounds: int,
    baseline: Callable[[], Awaitable[float]],
    subject: Callable[[], Awaitable[float]],
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
            sink.append(await fn())
    return base, subj


@dataclass(frozen=True)
class Goal:
    name: str
    unit: str
    better: str  # "lower" or "higher"
    goal_op: str  # "<=" or ">="
    goal: float


PERFORM = Goal("perform (trivial action)", "us/call", "lower", "<=", 1.5)
BROADCAST = Goal(f"broadcast x{SUBSCRIBERS} subscribers", "deliveries/s", "higher", ">=", 0.5)
IPC = Goal("IPC perform round trip", "us p50", "lower", "<=", 1.5)


def summarize(goal: Goal, base: list[float], subj: list[float]) -> Result:
    ratio = statistics.median(s / b for b, s in zip(base, subj, strict=True))
    met = ratio <= goal.goal if goal.goal_op == "<=" else ratio >= goal.goal
    return Result(
        name=goal.name,
        unit=goal.unit,
        better=goal.better,
        goal_op=goal.goal_op,
        goal=goal.goal,
        baseline=statistics.median(base),
        fleetbus=statistics.median(subj),
        ratio=ratio,
        met=met,
        rounds={"baseline": base, "fleetbus": subj},
    )


def invalid(goal: Goal, problem: str) -> Result:
    """A measurement whose correctness check failed: no numbers, only the problem."""
    res = summarize(goal, [math.nan], [math.nan])
    res.met = res.valid = False
    res.problems = [problem]
    return res


# -- 1. perform vs a pluggy hook call ---------------------------------------------------------
hookspec = pluggy.HookspecMarker("benchproj")
hookimpl = pluggy.HookimplMarker("benchproj")


class EchoSpec:
    @hookspec
    def echo(self, value: str) -> str:  # type: ignore[empty-body]
        """echo(value): return the value."""


class EchoImpl:
    @hookimpl
    def echo(self, value: str) -> str:
        return value


class Echo(BaseModel):
    value: str


async def echo(req: Echo) -> Echo:
    return req


async def bench_perform(profile: Profile) -> Result:
    pm = pluggy.PluginManager("benchproj")
    pm.add_hookspecs(EchoSpec)
    pm.register(EchoImpl())
    n = profile.perform_calls

    async with Bus() as bus:
        bus.add_action(make_spec("bench.echo", echo, plugin="bench"))

        problems = []
        if pm.hook.echo(value="x") != ["x"]:
            problems.append("pluggy echo returned the wrong value")
        if await bus.perform("bench.echo", {"value": "x"}) != Echo(value="x"):
            problems.append("bench.echo returned the wrong value")
        if problems:
            raise BenchError("; ".join(problems))

        async def baseline() -> float:
            call = pm.hook.echo
            t0 = now()
            for _ in range(n):
                call(value="x")
            return (now() - t0) / n / 1000

        async def subject() -> float:
            perform = bus.perform
            t0 = now()
            for _ in range(n):
                await perform("bench.echo", {"value": "x"})
            return (now() - t0) / n / 1000

        for _ in range(2):  # warm up (pydantic, pluggy and the interpreter's caches)
            await baseline()
            await subject()
        base, subj = await interleave(profile.rounds, baseline, subject)

    res = summarize(PERFORM, base, subj)
    res.extra = {"calls_per_round": n}
    return res


# -- 2. broadcast to 10 subscribers vs raw memory streams -------------------------------------
class Tick(Message):
    topic: ClassVar[str] = "bench.tick"
    n: int


async def broadcast_raw(n_msgs: int) -> tuple[int, list[int]]:
    """Elapsed ns and the count each consumer received."""
    pairs = [anyio.create_memory_object_stream[Tick](n_msgs) for _ in range(SUBSCRIBERS)]
    sends = [send for send, _ in pairs]
    counts = [0] * SUBSCRIBERS

    async def consume(i: int, receive: anyio.abc.ObjectReceiveStream[Tick]) -> None:
        async for _ in receive:
            counts[i] += 1
            if counts[i] == n_msgs:
                break

    t0 = now()
    with anyio.move_on_after(DELIVERY_TIMEOUT):
        async with anyio.create_task_group() as tg:
            for i, (_, receive) in enumerate(pairs):
                tg.start_soon(consume, i, receive)
            for k in range(n_msgs):
                item = Tick(n=k)
                for send in sends:
                    send.send_nowait(item)
                if k % YIELD_EVERY == YIELD_EVERY - 1:
                    await anyio.sleep(0)
    elapsed = now() - t0
    for send, receive in pairs:
        send.close()
        receive.close()
    return elapsed, counts


async def broadcast_bus(bus: Bus, n_msgs: int) -> tuple[int, list[int], int, int]:
    """Elapsed ns, the count each consumer received, total `dropped`, total `delivered`."""
    subs = [
        bus.open_subscription(["bench.tick"], name=f"s{i}", buffer=n_msgs)
        for i in range(SUBSCRIBERS)
    ]
    counts = [0] * SUBSCRIBERS

    async def consume(i: int, sub: Subscription) -> None:
        async for _ in sub:
            counts[i] += 1
            if counts[i] == n_msgs:
                break

    t0 = now()
    with anyio.move_on_after(DELIVERY_TIMEOUT):
        async with anyio.create_task_group() as tg:
            for i, sub in enumerate(subs):
                tg.start_soon(consume, i, sub)
            publish = bus.publish
            for k in range(n_msgs):
                publish(Tick(n=k))
                if k % YIELD_EVERY == YIELD_EVERY - 1:
                    await anyio.sleep(0)
            if any(sub.dropped for sub in subs):  # the consumers would wait in vain
                tg.cancel_scope.cancel()
    elapsed = now() - t0
    for sub in subs:
        bus.close_subscription(sub)
    return elapsed, counts, sum(s.dropped for s in subs), sum(s.delivered for s in subs)


async def bench_broadcast(profile: Profile) -> Result:
    n = profile.broadcast_messages
    expected = n * SUBSCRIBERS

    async with Bus() as bus:

        async def baseline() -> float:
            elapsed, counts = await broadcast_raw(n)
            if sum(counts) != expected:
                raise BenchError(f"raw streams: {sum(counts)} of {expected} delivered ({counts})")
            return expected / (elapsed / 1e9)

        async def subject() -> float:
            elapsed, counts, dropped, delivered = await broadcast_bus(bus, n)
            if dropped or sum(counts) != expected or delivered != expected:
                raise BenchError(
                    f"bus: {dropped} dropped; consumers got {sum(counts)}, subscriptions "
                    f"counted {delivered} delivered, of {expected} ({counts})"
                )
            return expected / (elapsed / 1e9)

        await baseline()  # warm up
        await subject()
        base, subj = await interleave(profile.rounds, baseline, subject)

    res = summarize(BROADCAST, base, subj)
    res.extra = {"messages_per_round": n, "subscribers": SUBSCRIBERS, "buffer": n}
    return res


# -- 3. IPC perform round trip vs a raw unix-socket JSON echo ---------------------------------
def dumps_line(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode() + b"\n"


def make_raw_handler(
    version: str, finished: anyio.Event
) -> Callable[[anyio.abc.SocketStream], Awaitable[None]]:
    """The baseline server: one JSON line in, one JSON line out, in order."""
    ids = itertools.count(1)

    async def handle(stream: anyio.abc.SocketStream) -> None:
        reader = BufferedByteReceiveStream(stream)
        try:
            await serve_lines(stream, reader)
        finally:
            finished.set()

    async def serve_lines(
        stream: anyio.abc.SocketStream, reader: BufferedByteReceiveStream
    ) -> None:
        async with stream:
            while True:
                try:
                    line = await reader.receive_until(b"\n", MAX_LINE)
                except (
                    anyio.EndOfStream,
                    anyio.IncompleteRead,
                    anyio.BrokenResourceError,
                    anyio.ClosedResourceError,
                ):
                    return
                req = json.loads(line)
                result = {
                    "echo": req["params"]["input"]["echo"],
                    "version": version,
                    "correlation_id": f"raw-{next(ids):x}",
                }
                await stream.send(dumps_line({"jsonrpc": "2.0", "id": req["id"], "result": result}))

    return handle


class RawClient:
    """The least a JSON-RPC client can do: send a line, wait for the reply line."""

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self.stream = stream
        self.reader = BufferedByteReceiveStream(stream)
        self.ids = itertools.count(1)

    @staticmethod
    def request(req_id: int, action: str, payload: Any) -> dict[str, Any]:
        # the same object HubClient.call builds for HubClient.perform(action, payload)
        return {
            "jsonrpc": "2.0",
            "id": req_id,
            "method": "perform",
            "params": {"action": action, "input": payload},
        }

    async def perform(self, action: str, payload: Any) -> Any:
        req_id = next(self.ids)
        await self.stream.send(dumps_line(self.request(req_id, action, payload)))
        reply = json.loads(await self.reader.receive_until(b"\n", MAX_LINE))
        if reply.get("id") != req_id:
            raise BenchError(f"raw echo: reply id {reply.get('id')!r}, expected {req_id}")
        return reply["result"]


async def bench_ipc(profile: Profile) -> Result:
    n = profile.ipc_calls
    payload = {"echo": "x"}
    all_base: list[float] = []
    all_subj: list[float] = []
    with tempfile.TemporaryDirectory(prefix="fbbench-") as tmp:
        root = Path(tmp)
        env = {
            "FLEETBUS_HOME": str(root / "home"),
            "XDG_CONFIG_HOME": str(root / "config"),  # never read the user's own config
            "XDG_STATE_HOME": str(root / "state"),
            "HOME": str(root),
        }
        hub = Hub(root / "home", entry_points=False, idle_timeout=0, env=env)
        async with anyio.create_task_group() as tg:
            await tg.start(hub.run)
            try:
                async with HubClient.open(hub.socket_path) as client:
                    pong = await client.perform("hub.ping", payload)
                    if pong.get("echo") != "x":
                        raise BenchError(f"hub.ping answered {pong!r}")
                    listener = await anyio.create_unix_listener(root / "raw.sock")
                    async with listener, anyio.create_task_group() as raw_tg:
                        finished = anyio.Event()
                        handler = make_raw_handler(pong["version"], finished)
                        raw_tg.start_soon(listener.serve, handler)
                        async with await anyio.connect_unix(root / "raw.sock") as stream:
                            raw = RawClient(stream)
                            # the baseline sends the bytes the fleetbus client sends
                            req = raw.request(7, "hub.ping", payload)
                            if dumps_line(req) != fleetbus_encode(req):
                                raise BenchError("the raw client's bytes differ from HubClient's")
                            got = await raw.perform("hub.ping", payload)
                            if got.keys() != pong.keys() or got["echo"] != "x":
                                raise BenchError(f"raw echo answered {got!r}, hub {pong!r}")

                            async def baseline() -> float:
                                samples = []
                                for _ in range(n):
                                    t0 = now()
                                    await raw.perform("hub.ping", payload)
                                    samples.append((now() - t0) / 1000)
                                all_base.extend(samples)
                                return statistics.median(samples)

                            async def subject() -> float:
                                samples = []
                                for _ in range(n):
                                    t0 = now()
                                    await client.perform("hub.ping", payload)
                                    samples.append((now() - t0) / 1000)
                                all_subj.extend(samples)
                                return statistics.median(samples)

                            for _ in range(max(1, 50 // n + 1)):  # warm up
                                await baseline()
                                await subject()
                            all_base.clear()
                            all_subj.clear()
                            base, subj = await interleave(profile.rounds, baseline, subject)
                        # let the raw server see EOF before cancelling it: cancelling a
                        # pending UNIX-socket read races the reader callback on asyncio
                        # (anyio logs "InvalidStateError: invalid state")
                        with anyio.move_on_after(2):
                            await finished.wait()
                        raw_tg.cancel_scope.cancel()
            finally:
                hub.request_stop()

    res = summarize(IPC, base, subj)
    res.extra = {
        "calls_per_round": n,
        "baseline_p50_us": percentile(all_base, 50),
        "baseline_p99_us": percentile(all_base, 99),
        "fleetbus_p50_us": percentile(all_subj, 50),
        "fleetbus_p99_us": percentile(all_subj, 99),
    }
    return res


# -- report ----------------------------------------------------------------------------------
def fmt(value: float, unit: str) -> str:
    if math.isnan(value):
        return "-"
    if unit == "deliveries/s":
        return f"{value / 1e6:.3f}M/s" if value >= 1e6 else f"{value / 1e3:.1f}k/s"
    return f"{value:.2f}us" if value < 100 else f"{value:.0f}us"


def table(results: list[Result]) -> str:
    head = ("name", "baseline", "fleetbus", "ratio", "goal", "met?")
    rows = [head]
    for r in results:
        met = "INVALID" if not r.valid else ("yes" if r.met else "NO")
        rows.append(
            (
                r.name,
                fmt(r.baseline, r.unit),
                fmt(r.fleetbus, r.unit),
                "-" if math.isnan(r.ratio) else f"{r.ratio:.2f}x",
                f"{r.goal_op} {r.goal:g}x",
                met,
            )
        )
    return aligned(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small counts (CI smoke run)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--rounds", type=int, default=None, help="override the round count")
    parser.add_argument(
        "--only",
        choices=("perform", "broadcast", "ipc"),
        action="append",
        help="run only this measurement (repeatable)",
    )
    args = parser.parse_args(argv)
    profile = QUICK if args.quick else FULL
    if args.rounds:
        profile = Profile(
            args.rounds, profile.perform_calls, profile.broadcast_messages, profile.ipc_calls
        )
    benches: dict[str, tuple[Goal, Callable[[Profile], Awaitable[Result]]]] = {
        "perform": (PERFORM, bench_perform),
        "broadcast": (BROADCAST, bench_broadcast),
        "ipc": (IPC, bench_ipc),
    }
    chosen = args.only or list(benches)

    async def run_one(key: str) -> Result:
        goal, bench = benches[key]
        problems: list[str] = []
        try:
            return await bench(profile)
        except* BenchError as group:  # task groups wrap it
            problems.extend(str(e) for e in group.exceptions)
        return invalid(goal, "; ".join(problems))

    async def run_all() -> list[Result]:
        results = []
        for key in chosen:
            t0 = time.perf_counter()
            log(f"bench {key} ...")
            res = await run_one(key)
            verdict = f"ratio {res.ratio:.2f}x" if res.valid else "INVALID"
            log(f"bench {key}: {verdict} in {time.perf_counter() - t0:.1f}s")
            results.append(res)
        return results

    started = time.perf_counter()
    results = anyio.run(run_all)
    elapsed = time.perf_counter() - started

    if args.json:
        ratio = "median of per-round fleetbus/baseline ratios"
        print(json_report(args.quick, profile, elapsed, results, ratio=ratio))
    else:
        print(table(results))
        for r in results:
            if "fleetbus_p99_us" in r.extra:
                x = r.extra
                print(
                    f"{r.name}: baseline p50 {x['baseline_p50_us']:.1f}us "
                    f"p99 {x['baseline_p99_us']:.1f}us | fleetbus p50 {x['fleetbus_p50_us']:.1f}us "
                    f"p99 {x['fleetbus_p99_us']:.1f}us"
                )
            for problem in r.problems:
                print(f"{r.name}: INVALID: {problem}")
        print(
            f"({profile.rounds} interleaved rounds; ratio = median of per-round ratios; "
            f"python {platform.python_version()}; {elapsed:.1f}s)"
        )
    return 0 if all(r.valid for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
