"""The sync service against a real HTTP server on 127.0.0.1 (`FakeFleetAPI`): delivery
exactly once per state under failures, backoff on an injected clock, drops with an audit
record, a hub killed mid-drain, 10,000 records, and a canary token that must never be
written anywhere."""

from __future__ import annotations

import json
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.lowlevel
import pytest

from fleetbus.bus import Refused
from fleetbus.bus.hub import Hub
from fleetbus.plugins.runner.clock import ManualClock
from fleetbus.plugins.sync import sync_of
from fleetbus.plugins.sync.service import backoff
from fleetbus.testing.fake_fleet_api import FakeFleetAPI
from fleetbus.testing.hub import cli_command, hub_process, isolated_env
from fleetbus.testing.processes import wait_for
from fleetbus.testing.runner import NOON, WAIT, Watch, dispatch, runner_hub

pytestmark = pytest.mark.anyio

TOKEN = "canary-7f3a9e1c"
TOKEN_ENV = {"FLEETBUS_SYNC_TOKEN": TOKEN}


@pytest.fixture
def api() -> Iterator[FakeFleetAPI]:
    with FakeFleetAPI(token=TOKEN) as server:
        yield server


def spec(api: FakeFleetAPI, **extra: Any) -> dict[str, Any]:
    return {"url": api.url, "agent_id": "test-agent", "fleet_node_id": "node-1", **extra}


def delivered(api: FakeFleetAPI) -> list[dict[str, Any]]:
    """Every record the API accepted, duplicates of an already accepted key left out."""
    out = []
    for r in api.accepted():
        if not r.duplicate:
            out += r.body["dispatches"]
    return out


async def run_some(hub: Hub, n: int) -> list[str]:
    watch = Watch(hub, ["runner.run_completed"])
    ids = [(await dispatch(hub, "echo hi", f"s/y/n{i}")).run_id for i in range(n)]
    for run_id in ids:
        await watch.completed(run_id)
    return ids


async def sees(api: FakeFleetAPI, predicate: Any, timeout: float = WAIT) -> bool:
    """Wait (off the event loop, which the embedded hub shares) until the server saw it."""
    return bool(await anyio.to_thread.run_sync(api.wait_for, predicate, timeout))


async def until(predicate: Any, timeout: float = WAIT) -> None:
    """Ask `predicate` (an action: each call waits on the hub) until it holds."""
    with anyio.fail_after(timeout):
        while not await predicate():
            await anyio.lowlevel.checkpoint()


def test_backoff_doubles_from_one_second_to_thirty() -> None:
    assert [backoff(n) for n in range(8)] == [0, 1, 2, 4, 8, 16, 30, 30]


# -- the acceptance ------------------------------------------------------------------
async def test_runs_are_delivered_exactly_once_through_three_failures(
    home: Path, api: FakeFleetAPI
) -> None:
    api.fail_next(3)
    async with runner_hub(home, sync=spec(api), env=TOKEN_ENV) as hub:
        ids = await run_some(hub, 5)
        for _ in range(4):  # three fail; the fourth try sends
            state = await hub.bus.perform("sync.push", {})
        assert state.queued == 0 and state.sent == 5, state
        records = delivered(api)
        assert sorted(r["run_id"] for r in records) == sorted(ids)
        tries: dict[str | None, list[int]] = {}
        for r in api.received:
            tries.setdefault(r.idempotency_key, []).append(r.status)
        assert sum(s == 500 for ss in tries.values() for s in ss) == 3
        for statuses in tries.values():  # a batch is retried under its key until sent once
            assert statuses[-1] == 200 and all(s == 500 for s in statuses[:-1]), tries
        assert all(r.authorization == f"Bearer {TOKEN}" for r in api.received)
        sent = len(api.received)
        await hub.bus.perform("sync.push", {})
        assert len(api.received) == sent  # nothing sent twice


async def test_a_batch_that_always_fails_is_dropped_after_max_attempts(
    home: Path, api: FakeFleetAPI
) -> None:
    api.always(500)
    async with runner_hub(home, sync=spec(api, max_attempts=3), env=TOKEN_ENV) as hub:
        await run_some(hub, 2)

        async def all_dropped() -> bool:
            state = await hub.bus.perform("sync.push", {})
            return bool(state.queued == 0 and state.dropped == 2)

        await until(all_dropped)
        records = (await hub.bus.perform("sync.records", {})).records
        drops = [r for r in records if r.outcome == "dropped"]
        assert sum(d.items for d in drops) == 2
        for drop in drops:
            assert drop.attempts == 3 and "gave up after 3 attempts" in drop.reason
            assert "500" in drop.reason and drop.payload_bytes > 0
        assert len(api.received) == 3 * len(drops)
        note = (await hub.bus.perform("sync.status", {})).note
        assert note == "nothing is waiting; 2 records were dropped (sync.records says why)"


async def test_backoff_waits_on_the_clock_and_429_honours_retry_after(
    home: Path, api: FakeFleetAPI
) -> None:
    clock = ManualClock(NOON)
    api.fail_next(2)
    async with runner_hub(home, sync=spec(api), env=TOKEN_ENV, clock=clock) as hub:
        await run_some(hub, 1)
        service = sync_of(hub)
        for n, delay in ((1, 1.0), (2, 2.0)):
            await clock.wait_for_sleeper(clock.now() + delay)
            assert await sees(api, lambda a, n=n: len(a.received) == n)
            clock.advance(delay)
        assert await sees(api, lambda a: len(a.accepted()) == 1)
        api.rate_limit_next("7")
        await run_some(hub, 1)
        service.ended()
        await clock.wait_for_sleeper(clock.now() + 7)
        clock.advance(7)
        assert await sees(api, lambda a: len(a.accepted()) == 2)
        assert [r.status for r in api.received] == [500, 500, 200, 429, 200]


async def test_a_4xx_is_dropped_at_once_with_its_reason(home: Path, api: FakeFleetAPI) -> None:
    api.fail_next(1, status=400)
    async with runner_hub(home, sync=spec(api), env=TOKEN_ENV) as hub:
        await run_some(hub, 1)
        state = await hub.bus.perform("sync.push", {})
        assert state.dropped == 1 and state.queued == 0
        records = (await hub.bus.perform("sync.records", {})).records
        assert records[0].outcome == "dropped" and "400" in records[0].reason
        assert records[0].attempts == 1


async def test_without_a_url_sync_is_idle_and_says_so(home: Path) -> None:
    async with runner_hub(home) as hub:
        await run_some(hub, 1)
        state = await hub.bus.perform("sync.status", {})
        assert not state.configured and "no sync.url" in state.note and state.queued == 0
        with pytest.raises(Refused) as e:
            await hub.bus.perform("sync.push", {})
        assert "no sync.url" in e.value.message


async def test_ten_thousand_records_drain_in_batches_exactly_once(
    home: Path, api: FakeFleetAPI
) -> None:
    async with runner_hub(home, sync=spec(api), env=TOKEN_ENV) as hub:
        service = sync_of(hub)
        items = [(f"rec:{n}", {"kind": "test", "n": n}) for n in range(10_000)]
        await service.outbox.add(items, NOON)
        service.work.set()

        async def drained() -> bool:
            return bool((await hub.bus.perform("sync.status", {})).queued == 0)

        assert await sees(api, lambda a: len(a.accepted()) >= 100, 120)
        await until(drained)  # the last batch's end is recorded
        records = delivered(api)
        assert sorted(r["n"] for r in records) == list(range(10_000))
        assert len(api.accepted()) == 100
        assert len({r.idempotency_key for r in api.accepted()}) == 100


async def test_a_pull_is_cached_and_served_when_the_remote_is_down(
    home: Path, api: FakeFleetAPI
) -> None:
    api.set_context({"notes": ["use tabs"]})
    async with runner_hub(home, sync=spec(api), env=TOKEN_ENV) as hub:
        fresh = await hub.bus.perform("sync.pull", {})
        assert fresh.fresh and fresh.context == {"notes": ["use tabs"]}
        api.stop()
        stale = await hub.bus.perform("sync.pull", {})
        assert not stale.fresh and stale.context == {"notes": ["use tabs"]} and stale.reason


# -- a hub killed mid-drain ------------------------------------------------------------------
def call(env: dict[str, str], action: str, payload: dict[str, Any] | None = None) -> Any:
    done = subprocess.run(
        cli_command("call", action, json.dumps(payload or {})),
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_a_hub_killed_mid_drain_loses_nothing_and_resends_under_the_same_key(
    home: Path, api: FakeFleetAPI
) -> None:
    config = home.parent / "fleetbus.yaml"
    config.write_text(json.dumps({"sync": spec(api)}))
    env = {**isolated_env(home, config=config), **TOKEN_ENV}
    api.delay_next(30)  # the first POST hangs: the hub dies with it in flight
    with hub_process(home, env) as hub:
        run = call(
            env, "runner.dispatch", {"agent": "fake", "prompt": "echo hi", "workspace": "k/i/ll"}
        )
        assert api.wait_for(lambda a: len(a.received) >= 1, WAIT)  # taken, not yet answered
        hub.send_signal(signal.SIGKILL)
        hub.wait(10)
    with hub_process(home, env):  # the next hub catches up and sends the batch again
        assert wait_for(lambda: call(env, "sync.status")["queued"] == 0, WAIT)
    records = delivered(api)
    assert [r["run_id"] for r in records] == [run["run_id"]]
    keys = [r.idempotency_key for r in api.received]
    assert len(keys) == 2 and len(set(keys)) == 1, keys  # the cut-off batch went again
    assert api.received[1].duplicate  # under its key: the API can tell


# -- the canary token --------------------------------------------------------------------------
async def test_the_token_is_never_written_anywhere(home: Path) -> None:
    with FakeFleetAPI(token="another-token") as wrong:  # 401: refused with the canary
        async with runner_hub(home, sync=spec(wrong), env=TOKEN_ENV) as hub:
            await run_some(hub, 2)
            state = await hub.bus.perform("sync.push", {})
            pulled = await hub.bus.perform("sync.pull", {})
            texts = [state.model_dump_json(), pulled.model_dump_json()]
            texts.append((await hub.bus.perform("sync.records", {})).model_dump_json())
        assert state.dropped == 2
    for text in texts:
        assert TOKEN not in text
    for path in home.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path


async def test_without_its_token_nothing_is_sent_and_status_says_why(
    home: Path, api: FakeFleetAPI
) -> None:
    clock = ManualClock(NOON)  # still: the retry after the first failure waits for good
    async with runner_hub(home, sync=spec(api), clock=clock) as hub:  # no FLEETBUS_SYNC_TOKEN
        await run_some(hub, 1)

        async def tried() -> bool:  # the run's end alone makes the hub try, and fail
            return bool((await hub.bus.perform("sync.status", {})).attempts == 1)

        await until(tried)
        state = await hub.bus.perform("sync.push", {})  # one more try, asked for
        assert state.queued == 1 and state.dropped == 0, state
        assert state.oldest_age_s is not None and state.oldest_age_s >= 0
        assert state.attempts == 2 and state.next_attempt_at is not None
        assert "FLEETBUS_SYNC_TOKEN" in state.last_error and "is not set" in state.last_error
        assert api.received == []
