"""The SQLite store: pragmas, per-plugin migrations, BEGIN IMMEDIATE, messages after commit."""

from __future__ import annotations

import sqlite3
import threading
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import anyio
import pytest
from sqlite_utils import Database, Migrations

from fleetbus.bus import Bus, Message, StartupError, Store, Tx

pytestmark = pytest.mark.anyio


class Saved(Message):
    topic: ClassVar[str] = "test.saved"
    n: int


def make_migrations() -> Migrations:
    m = Migrations("fleetbus.test")

    @m()
    def m0001_initial(db: Database) -> None:
        db.table("items").create({"id": int, "n": int}, pk="id")

    @m()
    def m0002_add_note(db: Database) -> None:
        db.table("items").add_column("note", str)

    return m


def test_open_sets_wal_full_sync_and_a_busy_timeout(tmp_path: Path) -> None:
    store = Store(tmp_path / "f.db")
    db = store.open()
    try:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert db.execute("PRAGMA busy_timeout").fetchone()[0] >= 5000
        assert (tmp_path / "f.db").stat().st_mode & 0o777 == 0o600
    finally:
        store.close()


def test_migrations_on_a_blank_database_give_the_expected_columns(tmp_path: Path) -> None:
    store = Store(tmp_path / "f.db")
    store.open()
    try:
        applied = store.migrate([("test", make_migrations())])
        assert applied == ["fleetbus.test:m0001_initial", "fleetbus.test:m0002_add_note"]
        assert store.db.table("items").columns_dict == {"id": int, "n": int, "note": str}
        assert store.migrate([("test", make_migrations())]) == []  # idempotent
    finally:
        store.close()


def test_a_failing_migration_applies_nothing_of_its_set_and_names_the_plugin(
    tmp_path: Path,
) -> None:
    m = Migrations("fleetbus.broken")

    @m()
    def m0001_ok(db: Database) -> None:
        db.table("things").create({"id": int}, pk="id")

    @m()
    def m0002_bad(db: Database) -> None:
        db.execute("this is not sql")

    store = Store(tmp_path / "f.db")
    store.open()
    try:
        with pytest.raises(StartupError, match=r"plugin 'broken'.*nothing of it was applied"):
            store.migrate([("broken", m)])
        assert not store.db.table("things").exists()
        assert m.applied(store.db) == []
    finally:
        store.close()


def test_a_corrupt_database_is_a_clear_startup_error(tmp_path: Path) -> None:
    path = tmp_path / "f.db"
    path.write_bytes(b"this is not a database, just some text" * 200)
    with pytest.raises(StartupError, match="cannot open the database"):
        Store(path).open()
    assert path.read_bytes().startswith(b"this is not a database")  # untouched


async def test_messages_are_published_after_commit_and_never_for_a_rollback(tmp_path: Path) -> None:
    async with Bus() as bus:
        store = Store(tmp_path / "f.db", bus.publish)
        store.open()
        store.migrate([("test", make_migrations())])
        sub = bus.open_subscription(["test.saved"])
        seen_inside: list[int] = []

        def save(tx: Tx) -> int:
            rowid = tx.db.table("items").insert({"n": 1}).last_pk
            tx.publish(Saved(n=1))
            seen_inside.append(sub.delivered + len(list(bus.history())))
            return int(rowid or 0)

        assert await store.write(save) == 1
        assert seen_inside == [0]  # nothing published while the transaction was open
        with anyio.fail_after(5):
            assert (await sub.receive()).message == Saved(n=1)

        def save_then_fail(tx: Tx) -> None:
            tx.db.table("items").insert({"n": 2})
            tx.publish(Saved(n=2))
            raise RuntimeError("abort")

        with pytest.raises(RuntimeError, match="abort"):
            await store.write(save_then_fail)
        assert [r["n"] for r in store.db.table("items").rows] == [1]
        assert [e.topic for e in bus.history()] == ["test.saved"]  # only the committed one
        store.close()


async def test_write_waits_for_another_writer_instead_of_failing(tmp_path: Path) -> None:
    """BEGIN IMMEDIATE queues behind a writer in another connection: the write runs once
    that writer commits, and sees its row."""
    path = tmp_path / "f.db"
    store = Store(path)
    store.open()
    store.migrate([("test", make_migrations())])
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    other.execute("BEGIN IMMEDIATE")
    other.execute("INSERT INTO items (n) VALUES (100)")
    seen: list[list[int]] = []

    def insert(tx: Tx) -> None:
        seen.append([r["n"] for r in tx.db.table("items").rows])
        tx.db.table("items").insert({"n": 1})

    try:
        async with anyio.create_task_group() as tg:
            tg.start_soon(store.write, insert)
            with anyio.fail_after(5):
                while store._limiter.borrowed_tokens == 0:  # the write is on its thread
                    await anyio.sleep(0)
            assert seen == []  # blocked behind the other writer
            other.execute("COMMIT")
        assert seen == [[100]]
        assert sorted(r["n"] for r in store.db.table("items").rows) == [1, 100]
    finally:
        other.close()
        store.close()


async def test_a_cancelled_write_still_finishes_its_transaction(tmp_path: Path) -> None:
    store = Store(tmp_path / "f.db")
    store.open()
    store.migrate([("test", make_migrations())])
    entered = threading.Event()
    proceed = threading.Event()

    def slow(tx: Tx) -> None:
        entered.set()
        proceed.wait(10)
        tx.db.table("items").insert({"n": 7})

    async with anyio.create_task_group() as tg:
        scope = anyio.CancelScope()

        async def writer() -> None:
            with scope:
                await store.write(slow)

        tg.start_soon(writer)
        await anyio.to_thread.run_sync(entered.wait, 5)
        scope.cancel()
        proceed.set()
    assert [r["n"] for r in store.db.table("items").rows] == [7]
    store.close()


async def test_read_runs_on_the_store_thread(tmp_path: Path) -> None:
    store = Store(tmp_path / "f.db")
    store.open()
    store.migrate([("test", make_migrations())])
    await store.write(lambda tx: tx.db.table("items").insert_all([{"n": i} for i in range(3)]))

    def count(db: Any) -> int:
        return int(db.execute("select count(*) from items").fetchone()[0])

    assert await store.read(count) == 3
    store.close()


async def test_a_write_that_need_not_be_durable_commits_and_full_sync_comes_back(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "f.db")
    store.open()
    store.migrate([("test", make_migrations())])
    try:

        def modes(db: Any) -> int:
            return int(db.execute("PRAGMA synchronous").fetchone()[0])

        seen: list[int] = []

        def write(tx: Tx) -> None:
            seen.append(int(tx.execute("PRAGMA synchronous").fetchone()[0]))
            tx.execute("INSERT INTO items (id, n) VALUES (1, 7)")

        await store.write(write, durable=False)
        assert seen == [1]  # NORMAL inside that one transaction
        assert await store.write(lambda tx: modes(tx)) == 2  # FULL again for the next
        found = await store.read(lambda db: db.execute("SELECT n FROM items").fetchall())
        assert [tuple(r) for r in found] == [(7,)]
    finally:
        store.close()


async def test_writes_arriving_during_a_commit_commit_together_and_a_failing_one_alone(
    tmp_path: Path,
) -> None:
    """Group commit: 100 writers queued behind a commit share the next transaction; the
    one that fails is rolled back alone (its caller gets its error, its message is never
    published) and the others' rows and messages all land, after that one COMMIT."""
    async with Bus() as bus:
        store = Store(tmp_path / "f.db", bus.publish)
        store.open()
        store.migrate([("test", make_migrations())])
        statements: list[str] = []
        store.db.conn.set_trace_callback(statements.append)
        sub = bus.open_subscription(["test.saved"], buffer=200)
        entered, proceed = threading.Event(), threading.Event()

        def first(tx: Tx) -> None:
            entered.set()
            proceed.wait(10)
            tx.execute("INSERT INTO items (n) VALUES (-1)")

        def save(n: int) -> Any:
            def fn(tx: Tx) -> int:
                tx.execute("INSERT INTO items (n) VALUES (?)", [n])
                tx.publish(Saved(n=n))
                if n == 37:
                    raise ValueError("writer 37 fails")
                return n

            return fn

        results: dict[int, Any] = {}

        async def writer(n: int) -> None:
            try:
                results[n] = await store.write(save(n))
            except ValueError as e:
                results[n] = e

        try:
            async with anyio.create_task_group() as tg:
                tg.start_soon(store.write, first)
                await anyio.to_thread.run_sync(entered.wait, 5)
                for n in range(100):
                    tg.start_soon(writer, n)
                await anyio.wait_all_tasks_blocked()  # all 100 wait behind the first commit
                proceed.set()
            assert isinstance(results.pop(37), ValueError)
            assert results == {n: n for n in range(100) if n != 37}
            rows = [r["n"] for r in store.db.execute("SELECT n FROM items ORDER BY id")]
            assert rows == [-1, *(n for n in range(100) if n != 37)]
            assert sum(s == "COMMIT" for s in statements) == 2  # the first, then the group
            assert statements.count("ROLLBACK TO write") == 1
            published = [e.message.n for e in bus.history() if isinstance(e.message, Saved)]
            assert published == [n for n in range(100) if n != 37]
            with anyio.fail_after(5):  # and a subscriber gets them, in that order
                got = [(await sub.receive()).message for _ in range(99)]
            assert [m.n for m in got if isinstance(m, Saved)] == published
        finally:
            store.close()


async def test_a_write_alone_needs_no_savepoint_and_a_group_is_durable_if_one_write_is(
    tmp_path: Path,
) -> None:
    store = Store(tmp_path / "f.db")
    store.open()
    store.migrate([("test", make_migrations())])
    statements: list[str] = []
    store.db.conn.set_trace_callback(statements.append)
    entered, proceed = threading.Event(), threading.Event()
    modes: list[int] = []

    def first(tx: Tx) -> None:
        entered.set()
        proceed.wait(10)

    def mode(tx: Tx) -> None:
        modes.append(int(tx.execute("PRAGMA synchronous").fetchone()[0]))

    try:
        await store.write(mode)
        assert not any(s.startswith("SAVEPOINT") for s in statements)
        async with anyio.create_task_group() as tg:
            tg.start_soon(store.write, first)
            await anyio.to_thread.run_sync(entered.wait, 5)
            tg.start_soon(partial(store.write, mode, durable=False))
            tg.start_soon(partial(store.write, mode, durable=True))
            await anyio.wait_all_tasks_blocked()
            proceed.set()
        async with anyio.create_task_group() as tg:
            tg.start_soon(store.write, first)  # `entered` is set: it goes straight on
            tg.start_soon(partial(store.write, mode, durable=False))
            tg.start_soon(partial(store.write, mode, durable=False))
        assert modes[:3] == [2, 2, 2]  # FULL alone, and for a group with one durable write
        assert set(modes[3:]) <= {1, 2} and len(modes) == 5
    finally:
        store.close()
