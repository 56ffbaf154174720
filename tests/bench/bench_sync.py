"""Benchmark of the sync service against a plain httpx2 loop posting the same batches, in
the same run: its wire alone (`FleetAPI.push`) and its whole drain (the issue's figure:
records queued in the outbox, batches formed, POSTed and recorded by the drainer).

Run it as a script (it is not a pytest test)::

    python tests/bench/bench_sync.py            # full run: 5 rounds x 2 sides x 10,000 records
    python tests/bench/bench_sync.py --quick    # smoke run: 5 rounds x 2 sides x 1,000 records
    python tests/bench/bench_sync.py --json     # the results as JSON on stdout

The records (finished runs, about 300 bytes of JSON each) are drained to a FakeFleetAPI on
127.0.0.1 in batches of 100, one POST after the other:

- baseline: one `httpx2.AsyncClient`, each batch encoded as compact JSON and POSTed with the
  same headers FleetAPI sends (bearer, Idempotency-Key, Content-Type, User-Agent);
- fleetbus: one `FleetAPI`, `push(agent, node, batch, key)` per batch, classification included;
- the service: a hub with the sync service, the records queued in its outbox (not timed),
  then drained by its drainer until its line is empty and the last end recorded.

A side's figure is records per second (goal: fleetbus/baseline >= 0.8x). The server runs
in a process of its own (as a fleet API is never inside the hub), the same server for both
sides of a round.
Shared machines are noisy, so each round has a fresh server and both sides, in alternating
order; a ratio is the median of the per-round ratios, a figure the median over rounds.
Timings are reported, never asserted; the exit status is 1 only when a check fails: a batch
not accepted exactly once per side, a body that differs between the sides, a server thread
left running.
"""

from __future__ import annotations

import gc
import http.client
import json
import math
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import anyio
import httpx2
from common import BenchError, Result, log, no_nan, parse_profile, ratio_table

from fleetbus.bus.version import version
from fleetbus.plugins.sync import sync_of
from fleetbus.plugins.sync.http import SYNC_PATH, FleetAPI
from fleetbus.testing.fake_fleet_api import FakeFleetAPI, Received
from fleetbus.testing.runner import runner_hub

GOAL = 0.8
BATCH = 100
TOKEN = "bench-token-0123456789"
AGENT, NODE = "bench-agent", "bench-node"


@dataclass(frozen=True)
class Profile:
    rounds: int
    records: int


FULL = Profile(rounds=5, records=10_000)
QUICK = Profile(rounds=5, records=1_000)


def _serve(conn: Connection, token: str) -> None:
    """The server process: a FakeFleetAPI answering its parent's questions on `conn`."""
    with FakeFleetAPI(token=token) as fake:
        conn.send(fake.url)
        while True:
            ask, arg = conn.recv()
            if ask == "stop":
                break
            if ask == "wait":
                wanted, timeout = arg

                def enough(f: FakeFleetAPI, n: int = wanted) -> bool:
                    return len(f.accepted()) >= n

                conn.send(fake.wait_for(enough, timeout))
            elif ask == "accepted":
                conn.send(fake.accepted())
            elif ask == "received":
                conn.send(len(fake.received))
    conn.send("stopped")


class ServerProcess:
    """A FakeFleetAPI in a process of its own; a context manager."""

    def __init__(self) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(target=_serve, args=(child, TOKEN), name="fake-fleet-api")
        self.process.start()
        self.url: str = self.conn.recv()
        self.warm()

    def warm(self, n: int = 50) -> None:
        """A few POSTs first (keys `warm-...`), so neither side meets a cold server."""
        doc = {"agent_id": AGENT, "fleet_node_id": NODE, "dispatches": make_records(BATCH)}
        body = json.dumps(doc).encode()
        headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
        connection = http.client.HTTPConnection(self.url.removeprefix("http://"), timeout=10)
        try:
            for i in range(n):
                connection.request(
                    "POST", SYNC_PATH, body, {**headers, "Idempotency-Key": f"warm-{i}"}
                )
                answer = connection.getresponse()
                answer.read()
                if answer.status != 200:
                    raise BenchError(f"warming the server: HTTP {answer.status}")
        finally:
            connection.close()

    def ask(self, what: str, arg: Any = None) -> Any:
        self.conn.send((what, arg))
        return self.conn.recv()

    def accepted(self) -> list[Received]:
        return list(self.ask("accepted"))

    def received(self) -> int:
        return int(self.ask("received"))

    def wait_accepted(self, n: int, timeout: float) -> bool:
        """Wait until `n` POSTs were accepted; False after `timeout` seconds."""
        return bool(self.ask("wait", (n, timeout)))

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.ask("stop")
        finally:
            self.process.join(10)
            if self.process.is_alive():
                self.process.kill()
                self.process.join()


def make_records(n: int) -> list[dict[str, Any]]:
    """`n` finished-run records, shaped like what the sync service sends."""
    return [
        {
            "kind": "run",
            "id": f"run-{i:06d}",
            "task_id": f"task-{i // 3:06d}",
            "agent": ("codex", "claude", "gemini")[i % 3],
            "workspace": f"acme/app/task-{i // 3:06d}",
            "status": "completed" if i % 7 else "failed",
            "exit_code": 0 if i % 7 else 1,
            "reason": "" if i % 7 else "exit status 1",
            "queued_at": 1_760_000_000.0 + i,
            "started_at": 1_760_000_001.5 + i,
            "ended_at": 1_760_000_042.25 + i,
            "usage": {"input_tokens": 1200 + i, "output_tokens": 340, "cost_usd": 0.0123},
        }
        for i in range(n)
    ]


def batches_of(records: list[dict[str, Any]]) -> list[list[dict[str, Any]]]:
    return [records[i : i + BATCH] for i in range(0, len(records), BATCH)]


async def baseline(url: str, batches: list[list[dict[str, Any]]], prefix: str) -> float:
    """The batches POSTed by a plain httpx2 loop; seconds taken."""
    headers = {
        "Authorization": f"Bearer {TOKEN}",
        "User-Agent": f"fleetbus/{version()}",
        "Content-Type": "application/json",
    }
    async with httpx2.AsyncClient(timeout=10.0, follow_redirects=False) as client:
        t0 = time.perf_counter()
        for i, batch in enumerate(batches):
            doc = {"agent_id": AGENT, "fleet_node_id": NODE, "dispatches": batch}
            body = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
            response = await client.post(
                f"{url}{SYNC_PATH}",
                content=body,
                headers={**headers, "Idempotency-Key": f"{prefix}{i}"},
            )
            if not response.is_success:
                raise BenchError(f"baseline: batch {i} answered HTTP {response.status_code}")
        return time.perf_counter() - t0


async def fleetbus(url: str, batches: list[list[dict[str, Any]]], prefix: str) -> float:
    """The batches pushed by FleetAPI; seconds taken."""
    async with FleetAPI(url, TOKEN) as api:
        t0 = time.perf_counter()
        for i, batch in enumerate(batches):
            outcome = await api.push(AGENT, NODE, batch, f"{prefix}{i}")
            if outcome.kind != "sent":
                raise BenchError(f"fleetbus: batch {i}: {outcome.kind}: {outcome.reason}")
        return time.perf_counter() - t0


Side = Callable[[str, list[list[dict[str, Any]]], str], Awaitable[float]]


def check_delivery(fake: ServerProcess, batches: list[list[dict[str, Any]]], r: int) -> None:
    """Each side's batches were accepted exactly once, with the same bodies on both sides."""
    accepted = fake.accepted()
    problems = []
    bodies: dict[str, list[Any]] = {}
    for side in ("baseline", "fleetbus"):
        prefix = f"r{r}-{side}-"
        mine = [a for a in accepted if (a.idempotency_key or "").startswith(prefix)]
        keys = [a.idempotency_key for a in mine]
        wanted = [f"{prefix}{i}" for i in range(len(batches))]
        if sorted(keys, key=str) != sorted(wanted) or any(a.duplicate for a in mine):
            problems.append(
                f"{side}: {len(set(keys))} distinct keys accepted in {len(keys)} answers, expected {len(wanted)} once each"
            )
        records = sum(len(a.body["dispatches"]) for a in mine if isinstance(a.body, dict))
        if records != sum(map(len, batches)):
            problems.append(
                f"{side}: {records} records accepted, expected {sum(map(len, batches))}"
            )
        if any(a.authorization != f"Bearer {TOKEN}" for a in mine):
            problems.append(f"{side}: a batch without the bearer token")
        bodies[side] = [
            a.body
            for a in sorted(mine, key=lambda a: int(str(a.idempotency_key).rsplit("-", 1)[1]))
        ]
    if bodies["baseline"] != bodies["fleetbus"]:
        problems.append("the two sides sent different bodies")
    received = fake.received()
    if len(accepted) != received:
        problems.append(f"{received - len(accepted)} requests not accepted")
    if problems:
        raise BenchError(f"round {r + 1}: {'; '.join(problems)}")


def rates(
    name: str, base: list[float], subj: list[float], extra: dict[str, Any] | None = None
) -> Result:
    """Records per second of both sides over the rounds; the ratio is the median of the
    per-round ratios."""
    ratio = statistics.median(s / b for b, s in zip(base, subj, strict=True))
    return Result(
        name=name,
        unit="/s",
        goal=f">= {GOAL:g}x",
        baseline=statistics.median(base),
        fleetbus=statistics.median(subj),
        ratio=ratio,
        met=ratio >= GOAL,
        rounds={"baseline": base, "fleetbus": subj},
        extra=extra or {},
    )


async def bench_drain(profile: Profile) -> list[Result]:
    batches = batches_of(make_records(profile.records))
    n = profile.records
    sides: dict[str, Side] = {"baseline": baseline, "fleetbus": fleetbus}

    async def one_round(
        r: int, order: tuple[str, ...], use: list[list[dict[str, Any]]]
    ) -> dict[str, float]:
        spent: dict[str, float] = {}
        with ServerProcess() as fake:
            for side in order:
                gc.collect()
                spent[side] = await sides[side](fake.url, use, f"r{r}-{side}-")
            check_delivery(fake, use, r)
        return spent

    await one_round(-1, ("baseline", "fleetbus"), batches[:5])  # warm up: imports, first connects
    base: list[float] = []
    subj: list[float] = []
    for r in range(profile.rounds):
        order = ("baseline", "fleetbus") if r % 2 == 0 else ("fleetbus", "baseline")
        spent = await one_round(r, order, batches)
        b, s = n / spent["baseline"], n / spent["fleetbus"]
        base.append(b)
        subj.append(s)
        log(
            f"  round {r + 1} ({order[0]} first): baseline {b:,.0f}/s, fleetbus {s:,.0f}/s ({s / b:.2f}x)"
        )
    size = len(
        json.dumps(
            {"agent_id": AGENT, "fleet_node_id": NODE, "dispatches": batches[0]},
            separators=(",", ":"),
        )
    )
    extra = {
        "records": n,
        "batches": len(batches),
        "batch_bytes": size,
        "baseline_ms_per_batch": BATCH / statistics.median(base) * 1000,
        "fleetbus_ms_per_batch": BATCH / statistics.median(subj) * 1000,
    }
    return [rates(f"drain {n:,} records in batches of {BATCH}", base, subj, extra)]


async def service_drain(
    fake: ServerProcess, batches: list[list[dict[str, Any]]], prefix: str
) -> float:
    """The same records drained by the sync service itself: queued in its outbox (not
    timed), then sent by its drainer (batches formed in one durable commit per 50, each
    POSTed, its end recorded while the next one is POSTed); seconds from waking the drainer
    to an empty line, the last end recorded."""
    with tempfile.TemporaryDirectory(prefix="fb-bench-sync-") as tmp:
        spec = {"url": fake.url, "agent_id": AGENT, "fleet_node_id": NODE, "batch_size": BATCH}
        env = {"FLEETBUS_SYNC_TOKEN": TOKEN}
        async with runner_hub(Path(tmp) / "home", sync=spec, env=env) as hub:
            service = sync_of(hub)
            items = [
                (f"{prefix}{i}:{j}", record)
                for i, batch in enumerate(batches)
                for j, record in enumerate(batch)
            ]
            await service.outbox.add(items, time.time())
            wanted = len(batches) + len(fake.accepted())
            t0 = time.perf_counter()
            service.work.set()
            arrived = await anyio.to_thread.run_sync(fake.wait_accepted, wanted, 300)
            with anyio.fail_after(60):  # the last batch's end is recorded
                while (await service.status()).queued:
                    await anyio.sleep(0.005)
            spent = time.perf_counter() - t0
            if not arrived:
                raise BenchError("the service did not deliver every batch in 300 s")
            if (await service.status()).sent != len(items):
                raise BenchError("the service did not send every record")
            return spent


async def bench_service(profile: Profile) -> list[Result]:
    """Records/s of the service's whole drain against the plain client loop, per round."""
    batches = batches_of(make_records(profile.records))
    n = profile.records
    base: list[float] = []
    subj: list[float] = []
    for r in range(profile.rounds):
        with ServerProcess() as fake:
            if r % 2 == 0:
                b = n / await baseline(fake.url, batches, f"s{r}-baseline-")
            s = n / await service_drain(fake, batches, f"s{r}-service-")
            if r % 2 == 1:
                b = n / await baseline(fake.url, batches, f"s{r}-baseline-")
            accepted = [
                a
                for a in fake.accepted()
                if not a.duplicate and not str(a.idempotency_key).startswith("warm-")
            ]
            if sum(len(a.body["dispatches"]) for a in accepted) != 2 * n:
                raise BenchError(f"round {r + 1}: not every record was accepted exactly once")
        base.append(b)
        subj.append(s)
        first = "baseline" if r % 2 == 0 else "the service"
        log(
            f"  round {r + 1} ({first} first): baseline {b:,.0f}/s, the service {s:,.0f}/s "
            f"({s / b:.2f}x)"
        )
    return [rates(f"the sync service drains {n:,} records from its outbox", base, subj)]


async def bench_all(profile: Profile) -> list[Result]:
    return [*await bench_drain(profile), *await bench_service(profile)]


def servers_left() -> list[str]:
    """Server processes or threads still running."""
    threads = [t.name for t in threading.enumerate() if t.name.startswith("fake-fleet-api:")]
    return threads + [p.name for p in multiprocessing.active_children()]


# -- report ------------------------------------------------------------------------------------
def fmt(value: float, unit: str) -> str:
    return "-" if math.isnan(value) else f"{value:,.0f}{unit}"


def invalid(problem: str) -> list[Result]:
    return [Result.invalid("drain records", "/s", f">= {GOAL:g}x", problem)]


def main(argv: list[str] | None = None) -> int:
    args, profile = parse_profile(
        __doc__, argv, FULL, QUICK, "records", "override the record count"
    )

    started = time.perf_counter()
    log("bench drain ...")
    try:
        results = anyio.run(bench_all, profile)
    except (BenchError, httpx2.HTTPError) as e:
        results = invalid(f"{type(e).__name__}: {e}")
    left = servers_left()
    if left:
        for r in results:
            r.valid, r.met = False, False
            r.problems.append(f"servers still running after the bench: {left[:5]}")
    elapsed = time.perf_counter() - started
    verdicts = ", ".join(f"{r.ratio:.2f}x" if r.valid else "INVALID" for r in results)
    log(f"bench drain: {verdicts} in {elapsed:.1f}s")

    if args.json:
        doc = {
            "profile": "quick" if args.quick else "full",
            "settings": {**asdict(profile), "batch": BATCH},
            "python": platform.python_version(),
            "httpx2": httpx2.__version__,
            "cpus": os.cpu_count(),
            "elapsed_s": round(elapsed, 2),
            "ratio": "median of per-round fleetbus/baseline ratios (records per second)",
            "results": [asdict(r) for r in results],
        }
        print(json.dumps(no_nan(doc), indent=2))
    else:
        print(ratio_table(results, fmt))
        for r in results:
            x = r.extra
            if "batches" in x:
                print(
                    f"{r.name}: {x['batches']} POSTs of {x['batch_bytes']:,} bytes per side and "
                    f"round; per batch baseline {x['baseline_ms_per_batch']:.2f}ms, fleetbus "
                    f"{x['fleetbus_ms_per_batch']:.2f}ms"
                )
            for problem in r.problems:
                print(f"{r.name}: INVALID: {problem}")
        print(
            f"({profile.rounds} rounds, sides alternating; ratio = median of per-round ratios; "
            f"python {platform.python_version()}; httpx2 {httpx2.__version__}; "
            f"{os.cpu_count()} CPUs; {elapsed:.1f}s)"
        )
    return 0 if all(r.valid for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
