"""The runner's schema and its guarded statements, on a real SQLite file.

Migrations are applied to a blank database and the resulting columns asserted; claims take
only queued runs and number each start; an end applies only to the running attempt it
belongs to, so a stale end (of an attempt a newer start superseded) or a duplicate end
changes nothing and announces nothing.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from sqlite_utils import Database

from fleetbus.bus import Context, Message, Store
from fleetbus.plugins.runner.queue import Row, RunQueue, claim_in, record_end
from fleetbus.plugins.runner.runs import Ending, RunRef
from fleetbus.plugins.runner.schema import migrations
from fleetbus.plugins.runner.supervisor import Settled

pytestmark = pytest.mark.anyio

NOW = 1767268800.0


class Published:
    """The messages a store published (after its commits)."""

    def __init__(self) -> None:
        self.messages: list[Message] = []

    def __call__(self, message: Message, context: Context | None = None) -> None:
        self.messages.append(message)

    def topics(self) -> list[str]:
        return [m.topic for m in self.messages]


@pytest.fixture
def published() -> Published:
    return Published()


@pytest.fixture
async def queue(tmp_path: Path, published: Published) -> AsyncIterator[RunQueue]:
    store = Store(tmp_path / "fleetbus.db", published)
    store.open()
    store.migrate([("runner", migrations)])
    try:
        yield RunQueue(store)
    finally:
        store.close()


def blank(tmp_path: Path) -> Database:
    return Database(tmp_path / "blank.db")


async def insert(queue: RunQueue, run_id: str, workspace: str = "a/b/c", **columns: Any) -> int:
    row = {
        "id": run_id,
        "workspace": workspace,
        "agent": "fake",
        "model": None,
        "prompt": "echo hi",
        "priority": 2,
        "session_mode": "queue",
        "status": "queued",
        "timeout_s": 60.0,
        "created_at": NOW,
        **columns,
    }
    return await queue.insert(row)


async def row(queue: RunQueue, run_id: str) -> dict[str, Any]:
    found = await queue.store.read(
        lambda db: db.execute("SELECT * FROM runs WHERE id = ?", [run_id]).fetchone()
    )
    assert found is not None
    return dict(found)


async def end(queue: RunQueue, run_id: str, attempt: int, ending: Ending) -> bool:
    return await queue.store.write(lambda tx: record_end(tx, run_id, attempt, ending))


def settled(run_id: str, attempt: int, status: str = "completed", code: int = 0) -> Settled:
    ref = RunRef(run_id, "a/b/c", "fake", None, {"session": "s1"})
    return Settled(ref, attempt, NOW, Ending(status, "", code, NOW + 5))


# --- the schema -----------------------------------------------------------------------------


def test_the_migrations_build_the_runner_schema_on_a_blank_database(tmp_path: Path) -> None:
    db = blank(tmp_path)
    migrations.apply(db)
    assert [m.name for m in migrations.pending(db)] == []
    assert db["runs"].columns_dict == {
        "seq": int,
        "id": str,
        "workspace": str,
        "agent": str,
        "model": str,
        "prompt": str,
        "priority": int,
        "session_mode": str,
        "status": str,
        "reason": str,
        "timeout_s": float,
        "idempotency_key": str,
        "origin": str,
        "previous_run": str,
        "created_at": float,
        "not_before": float,
        "started_at": float,
        "ended_at": float,
        "exit_code": int,
        "pid": int,
        "proc_start": float,
        "run_dir": str,
        "usage": str,
        "question": str,
        "attempt": int,
    }
    assert db["pools"].columns_dict == {"pool": str, "backoff_until": float, "reason": str}
    assert {i.name for i in db.table("runs").indexes} >= {
        "runs_queue",
        "runs_order",
        "runs_workspace",
        "runs_agent_started",
    }


def test_runs_that_started_before_the_attempt_migration_count_as_attempt_1(
    tmp_path: Path,
) -> None:
    db = blank(tmp_path)
    migrations.apply(db, stop_before="m0003_run_attempt")
    assert "attempt" not in db["runs"].columns_dict
    base = {
        "workspace": "a/b/c",
        "agent": "fake",
        "prompt": "p",
        "priority": 2,
        "session_mode": "queue",
        "timeout_s": 60.0,
        "created_at": NOW,
    }
    db.table("runs").insert_all(
        [
            {**base, "id": "started", "status": "running", "started_at": NOW},
            {**base, "id": "waiting", "status": "queued"},
        ]
    )
    migrations.apply(db)
    attempts = {r["id"]: r["attempt"] for r in db["runs"].rows}
    assert attempts == {"started": 1, "waiting": 0}


async def claim(
    queue: RunQueue, run_id: str, now: float, run_dir: str, previous: str | None
) -> Row | None:
    """The drain's claim of run `run_id` (in `claim_next`), in a transaction of its own."""
    return await queue.store.write(lambda tx: claim_in(tx, run_id, now, run_dir, previous))


# --- claims and ends ------------------------------------------------------------------------


async def test_a_claim_takes_only_a_queued_run_and_numbers_each_start(queue: RunQueue) -> None:
    await insert(queue, "r1")
    first = await claim(queue, "r1", NOW, "/runs/r1", None)
    assert first is not None
    assert (first["status"], first["attempt"], first["started_at"]) == ("running", 1, NOW)
    assert await claim(queue, "r1", NOW + 1, "/runs/r1", None) is None  # not queued
    assert (await row(queue, "r1"))["started_at"] == NOW
    assert await queue.requeue("r1", attempt=1)
    assert not await queue.requeue("r1", attempt=1)  # already queued
    second = await claim(queue, "r1", NOW + 2, "/runs/r1", None)
    assert second is not None and second["attempt"] == 2


async def test_a_stale_end_changes_nothing(queue: RunQueue, published: Published) -> None:
    """Attempt 1 was superseded by attempt 2 (the run was queued again and restarted):
    attempt 1's late end must neither end the run nor announce anything."""
    await insert(queue, "r1")
    assert await claim(queue, "r1", NOW, "/runs/r1", None) is not None
    assert await queue.requeue("r1", attempt=1)
    assert await claim(queue, "r1", NOW + 1, "/runs/r1", None) is not None
    before = await row(queue, "r1")
    published.messages.clear()

    await queue.store.write(settled("r1", attempt=1, status="failed", code=1).record)

    assert await row(queue, "r1") == before
    assert before["status"] == "running" and before["attempt"] == 2
    assert published.messages == []

    await queue.store.write(settled("r1", attempt=2).record)
    after = await row(queue, "r1")
    assert (after["status"], after["exit_code"], after["ended_at"]) == ("completed", 0, NOW + 5)
    assert published.topics() == ["runner.run_completed", "channel"]


async def test_a_duplicate_end_changes_nothing(queue: RunQueue, published: Published) -> None:
    await insert(queue, "r1")
    assert await claim(queue, "r1", NOW, "/runs/r1", None) is not None
    assert await end(queue, "r1", 1, Ending("completed", "", 0, NOW + 5))
    ended = await row(queue, "r1")
    published.messages.clear()
    assert not await end(queue, "r1", 1, Ending("failed", "again", 1, NOW + 9))
    await queue.store.write(settled("r1", attempt=1, status="timeout").record)
    assert await row(queue, "r1") == ended
    assert published.messages == []


async def test_an_end_never_applies_to_a_queued_run(queue: RunQueue) -> None:
    await insert(queue, "r1")
    assert not await end(queue, "r1", 0, Ending("completed", "", 0, NOW))
    assert (await row(queue, "r1"))["status"] == "queued"


async def test_cancels_and_merges_take_only_queued_runs(queue: RunQueue) -> None:
    await insert(queue, "running")
    await insert(queue, "waiting")
    assert await claim(queue, "running", NOW, "/runs/running", None) is not None
    cancelled = await queue.cancel_queued(["running", "waiting"], "cancelled by a test", NOW)
    assert [r["id"] for r in cancelled] == ["waiting"]
    assert (await row(queue, "running"))["status"] == "running"
    assert await queue.merge("waiting", "more", 1, NOW + 1, "queue") is None
    assert await queue.merge("running", "more", 1, NOW + 1, "queue") is None
    assert (await row(queue, "running"))["prompt"] == "echo hi"
