"""The sync service's wire against a real HTTP server on 127.0.0.1 (FakeFleetAPI) with the
real httpx2 client: how each answer is classified, what is sent, timeouts, cancellation,
and the token kept out of every reason. Every wait is bounded."""

from __future__ import annotations

import email.utils
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import anyio
import pytest

from fleetbus.bus.version import version
from fleetbus.plugins.sync.http import (
    CONTEXT_PATH,
    SYNC_PATH,
    FleetAPI,
    Outcome,
    parse_retry_after,
)
from fleetbus.testing.fake_fleet_api import FakeFleetAPI

pytestmark = pytest.mark.anyio

CANARY = "canary-7f3a9e"
RECORDS = [{"run_id": "r1", "status": "completed", "note": "héllo"}, {"run_id": "r2"}]
WAIT = 5.0


def checked(outcome: Outcome) -> Outcome:
    """Every outcome a test sees: one line, and never the token."""
    assert CANARY not in outcome.reason, outcome
    assert "\n" not in outcome.reason, outcome
    assert outcome.reason, outcome
    return outcome


@pytest.fixture
def fake() -> Iterator[FakeFleetAPI]:
    with FakeFleetAPI(token=CANARY) as server:
        yield server


def free_port() -> int:
    """A port nothing listens on (bound, then closed)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


async def test_a_batch_is_sent_with_its_body_and_headers(fake: FakeFleetAPI) -> None:
    async with FleetAPI(fake.url + "/", CANARY) as api:
        outcome = checked(await api.push("agent-1", "node-1", RECORDS, "batch-1"))
    assert outcome == Outcome("sent", 200, "HTTP 200")
    [got] = fake.received
    assert (got.method, got.path, got.status, got.duplicate) == ("POST", SYNC_PATH, 200, False)
    assert got.body == {"agent_id": "agent-1", "fleet_node_id": "node-1", "dispatches": RECORDS}
    assert got.authorization == f"Bearer {CANARY}"
    assert got.idempotency_key == "batch-1"
    assert got.headers["content-type"] == "application/json"
    assert got.headers["user-agent"] == f"fleetbus/{version()}"


async def test_without_a_token_no_authorization_is_sent() -> None:
    with FakeFleetAPI() as fake:
        async with FleetAPI(fake.url, None) as api:
            outcome = checked(await api.push("a", "n", RECORDS, "k"))
        assert outcome.kind == "sent"
        assert fake.received[0].authorization is None


@pytest.mark.parametrize(
    ("status", "kind"),
    [(500, "retry"), (503, "retry"), (408, "retry"), (400, "drop"), (404, "drop"), (307, "drop")],
)
async def test_an_answer_is_classified_by_its_status(
    fake: FakeFleetAPI, status: int, kind: str
) -> None:
    fake.fail_next(1, status)
    async with FleetAPI(fake.url, CANARY) as api:
        outcome = checked(await api.push("a", "n", RECORDS, "k"))
        assert (outcome.kind, outcome.status, outcome.retry_after) == (kind, status, None)
        assert f"HTTP {status}" in outcome.reason
        assert checked(await api.push("a", "n", RECORDS, "k")).kind == "sent"  # one only
    assert [r.status for r in fake.received] == [status, 200]


async def test_a_refusal_quotes_the_body_on_one_line(fake: FakeFleetAPI) -> None:
    fake.fail_next(1, 400)
    async with FleetAPI(fake.url, CANARY) as api:
        outcome = checked(await api.push("a", "n", RECORDS, "k"))
    assert outcome.kind == "drop"
    assert outcome.reason.startswith("the API refused the batch: HTTP 400: ")
    assert "injected failure: HTTP 400" in outcome.reason


async def test_a_wrong_token_is_dropped_and_never_repeated() -> None:
    with FakeFleetAPI(token="the-server-wants-this") as fake:
        async with FleetAPI(fake.url, CANARY) as api:
            outcome = checked(await api.push("a", "n", RECORDS, "k"))
    assert (outcome.kind, outcome.status) == ("drop", 401)
    # the server quoted the header it got: the reason has it scrubbed
    assert CANARY in str(fake.received[0].authorization)
    assert "Bearer ***" in outcome.reason


async def test_a_429_carries_its_retry_after_in_seconds(fake: FakeFleetAPI) -> None:
    fake.rate_limit_next("7")
    when = email.utils.formatdate(time.time() + 60, usegmt=True)
    fake.rate_limit_next(when)
    fake.rate_limit_next("soon")
    async with FleetAPI(fake.url, CANARY) as api:
        seconds = checked(await api.push("a", "n", RECORDS, "k"))
        dated = checked(await api.push("a", "n", RECORDS, "k"))
        unreadable = checked(await api.push("a", "n", RECORDS, "k"))
    assert (seconds.kind, seconds.status, seconds.retry_after) == ("retry", 429, 7.0)
    assert (dated.kind, dated.status) == ("retry", 429)
    assert dated.retry_after is not None and 0 < dated.retry_after <= 61
    assert (unreadable.kind, unreadable.retry_after) == ("retry", None)


def test_retry_after_values() -> None:
    now = 1_800_000_000.0
    assert parse_retry_after("0") == 0.0
    assert parse_retry_after(" 120 ") == 120.0
    assert parse_retry_after(email.utils.formatdate(now + 30, usegmt=True), now) == 30.0
    assert parse_retry_after(email.utils.formatdate(now - 30, usegmt=True), now) == 0.0
    for bad in (None, "", "-5", "inf", "nan", "tomorrow"):
        assert parse_retry_after(bad, now) is None, bad


async def test_nothing_listening_is_a_retry_without_status() -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with FleetAPI(url, CANARY) as api:
        outcome = checked(await api.push("a", "n", RECORDS, "k"))
    assert (outcome.kind, outcome.status) == ("retry", None)
    assert outcome.reason.startswith(f"cannot reach {url}{SYNC_PATH}: ConnectError")


async def test_a_slow_server_is_a_timeout_and_stops_at_once(fake: FakeFleetAPI) -> None:
    fake.delay_next(2)
    async with FleetAPI(fake.url, CANARY, timeout=0.2) as api:
        outcome = checked(await api.push("a", "n", RECORDS, "k"))
    assert (outcome.kind, outcome.status) == ("retry", None)
    assert "ReadTimeout" in outcome.reason
    serving = [t for t in threading.enumerate() if t.name.startswith("fake-fleet-api:")]
    started = time.monotonic()
    fake.stop()  # the delayed answer is woken, not waited for
    assert time.monotonic() - started < 1.5
    assert not any(t.is_alive() for t in serving)


async def test_a_cancelled_push_raises_through_and_gives_no_outcome(fake: FakeFleetAPI) -> None:
    fake.delay_next(2)
    outcomes: list[Outcome] = []
    async with FleetAPI(fake.url, CANARY) as api:
        with anyio.move_on_after(0.2) as scope:
            outcomes.append(await api.push("a", "n", RECORDS, "k"))
        assert scope.cancelled_caught
        assert outcomes == []
        assert fake.wait_for(lambda f: len(f.received) == 1, WAIT)
        # the client is still usable; the server had taken the batch, so this is a duplicate
        again = checked(await api.push("a", "n", RECORDS, "k"))
    assert again.kind == "sent"
    assert [r.duplicate for r in fake.accepted()] == [False, True]


async def test_a_retried_batch_is_delivered_once(fake: FakeFleetAPI) -> None:
    fake.fail_next(2, 503)
    async with FleetAPI(fake.url, CANARY) as api:
        kinds = [checked(await api.push("a", "n", RECORDS, "b1")).kind for _ in range(4)]
    assert kinds == ["retry", "retry", "sent", "sent"]
    fresh = [r for r in fake.accepted() if not r.duplicate]
    assert [r.idempotency_key for r in fresh] == ["b1"]
    assert len(fake.accepted()) == 2


async def test_pushes_reuse_one_connection(fake: FakeFleetAPI) -> None:
    async with FleetAPI(fake.url, CANARY) as api:
        for i in range(10):
            assert checked(await api.push("a", "n", RECORDS, f"k{i}")).kind == "sent"
    assert fake.connections == 1
    assert len({r.idempotency_key for r in fake.accepted()}) == 10


async def test_a_batch_that_is_not_json_is_dropped_unsent(fake: FakeFleetAPI) -> None:
    bad: list[dict[str, Any]] = [{"when": object()}, {"x": float("nan")}]
    async with FleetAPI(fake.url, CANARY) as api:
        for record in bad:
            outcome = checked(await api.push("a", "n", [record], "k"))
            assert (outcome.kind, outcome.status) == ("drop", None)
            assert outcome.reason.startswith("the batch is not valid JSON")
    assert fake.received == []


async def test_pull_returns_the_context(fake: FakeFleetAPI) -> None:
    context = {"notes": ["prefer small PRs"], "until": "2026-01-01T00:00:00Z"}
    fake.set_context(context)
    async with FleetAPI(fake.url, CANARY) as api:
        first, body = await api.pull("agent-1", None)
        second, _ = await api.pull("agent-1", "2025-12-31T00:00:00Z")
    assert (checked(first), body) == (Outcome("sent", 200, "HTTP 200"), context)
    assert checked(second).kind == "sent"
    got = fake.received
    assert [(r.method, r.path) for r in got] == [("GET", CONTEXT_PATH)] * 2
    assert got[0].query == {"agent_id": "agent-1"}
    assert got[1].query == {"agent_id": "agent-1", "since": "2025-12-31T00:00:00Z"}
    assert got[0].authorization == f"Bearer {CANARY}"


async def test_pull_retries_when_the_server_is_down(fake: FakeFleetAPI) -> None:
    fake.stop()
    async with FleetAPI(fake.url, CANARY) as api:
        outcome, body = await api.pull("agent-1", None)
    assert (checked(outcome).kind, outcome.status, body) == ("retry", None, None)
    assert outcome.reason.startswith(f"cannot reach {fake.url}{CONTEXT_PATH}: ConnectError")


async def test_pull_with_a_wrong_token_is_refused() -> None:
    with FakeFleetAPI(token="other") as fake:
        async with FleetAPI(fake.url, CANARY) as api:
            outcome, body = await api.pull("agent-1", None)
    assert (checked(outcome).kind, outcome.status, body) == ("drop", 401, None)
    assert outcome.reason.startswith("the API refused the context request: HTTP 401")
