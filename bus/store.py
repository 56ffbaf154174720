"""The SQLite store: WAL, `synchronous=FULL`, one writer, `BEGIN IMMEDIATE` writes.

Every write goes through one worker thread (a capacity limiter of one), so the event loop
never blocks on `fsync` and there is exactly one writer; writes that arrive while one
commits are committed together next (group commit, a savepoint each). Messages queued
on a transaction with `tx.publish(...)` are published after its COMMIT, never for a
rollback.
"""

from __future__ import annotations

import errno
import logging
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar, cast

import anyio
import anyio.to_thread
import sqlite_utils
from sqlite_utils import Migrations

from .context import Context
from .errors import Refused, StartupError
from .messages import Message
from .registrar import Registrar

if TYPE_CHECKING:
    from .hub import Hub

log = logging.getLogger("fleetbus.store")

T = TypeVar("T")
BUSY_TIMEOUT_MS = 10_000
Publish = Callable[[Message, Context | None], Any]


@dataclass
class _Write:
    """A write waiting for, or done in, a group commit."""

    fn: Callable[[Tx], Any]
    durable: bool
    woken: anyio.Event = field(default_factory=anyio.Event)
    done: bool = False
    result: Any = None
    error: BaseException | None = None
    tx: Tx | None = None


@dataclass
class Tx:
    """An open write transaction: run SQL on `db`, queue messages for after the commit."""

    db: sqlite_utils.Database
    messages: list[tuple[Message, Context | None]] = field(default_factory=list)

    def execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        return self.db.execute(sql, params)

    def publish(self, message: Message, context: Context | None = None) -> None:
        """Publish `message` once this transaction has committed (dropped on rollback)."""
        self.messages.append((message, context))


class MigrationsRegistrar(Registrar):
    """The `register` object of the `register_migrations(register)` hook."""

    def __init__(
        self, plugin: str, sink: Callable[[str, Migrations], None], hub: Hub | None = None
    ) -> None:
        super().__init__(plugin, hub)
        self._sink = sink

    def __call__(self, migrations: Migrations) -> Migrations:
        if not isinstance(migrations, Migrations):
            raise StartupError(
                f"plugin {self.plugin!r}: register() takes a sqlite_utils.Migrations set"
            )
        self._sink(self.plugin, migrations)
        return migrations


def connect(path: Path) -> sqlite3.Connection:
    """Open `path` with the pragmas every fleetbus connection uses."""
    conn = sqlite3.connect(str(path), check_same_thread=False, timeout=BUSY_TIMEOUT_MS / 1000)
    conn.row_factory = sqlite3.Row
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
    conn.execute("PRAGMA foreign_keys = ON")
    return conn


def _disk_full(e: BaseException) -> bool:
    if isinstance(e, OSError) and not isinstance(e, sqlite3.Error):
        return e.errno == errno.ENOSPC
    return "disk is full" in str(e) or getattr(e, "sqlite_errorname", "") == "SQLITE_FULL"


class Store:
    """The hub's database. Open it with `open()`, migrate, then use `write`/`read`."""

    def __init__(self, path: Path, publish: Publish | None = None) -> None:
        self.path = Path(path)
        self._publish = publish
        self._db: sqlite_utils.Database | None = None
        self._limiter = anyio.CapacityLimiter(1)
        self._queued: list[_Write] = []  # writes waiting for the next group commit
        self._leading = False  # a caller is committing a group
        # reads use a connection and a thread of their own (WAL readers never wait for the
        # writer's fsync): a status read under load is not queued behind commits
        self._reader: sqlite_utils.Database | None = None
        self._read_limiter = anyio.CapacityLimiter(1)

    def open(self) -> sqlite_utils.Database:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if not self.path.exists():
                self.path.touch(mode=0o600)  # WAL and SHM files take the database's mode
            conn = connect(self.path)
            db = sqlite_utils.Database(conn)
            db.enable_wal()
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
        except sqlite3.DatabaseError as e:
            raise StartupError(
                f"cannot open the database {self.path}: {e}; move the file away to start afresh"
            ) from e
        self._db = db
        return db

    @property
    def db(self) -> sqlite_utils.Database:
        if self._db is None:
            raise RuntimeError("the store is not open")
        return self._db

    def close(self) -> None:
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        if self._db is not None:
            self._db.close()
            self._db = None

    def _read_db(self) -> sqlite_utils.Database:
        if self._reader is None:
            conn = connect(self.path)
            conn.execute("PRAGMA query_only = ON")
            self._reader = sqlite_utils.Database(conn)
        return self._reader

    def migrate(self, sets: list[tuple[str, Migrations]]) -> list[str]:
        """Apply every pending migration, set by set, each set in one transaction."""
        applied: list[str] = []
        for plugin, migrations in sets:
            pending = [m.name for m in migrations.pending(self.db)]
            if not pending:
                continue
            try:
                with self.transaction():
                    migrations.apply(self.db)
            except Exception as e:
                raise StartupError(
                    f"plugin {plugin!r}: migration set {migrations.name!r} failed: "
                    f"{type(e).__name__}: {e}; nothing of it was applied"
                ) from e
            applied += [f"{migrations.name}:{name}" for name in pending]
        return applied

    @contextmanager
    def transaction(self, *, publish: bool = True) -> Iterator[Tx]:
        """`BEGIN IMMEDIATE` … `COMMIT`, then publish the queued messages; rollback on error.

        Synchronous: call it from the store's thread (inside `write`) or at startup.
        """
        conn = self.db.conn
        conn.execute("BEGIN IMMEDIATE")
        tx = Tx(self.db)
        try:
            yield tx
            conn.execute("COMMIT")
        except BaseException:
            if conn.in_transaction:  # also when the COMMIT itself failed (a full disk)
                conn.execute("ROLLBACK")
            raise
        if publish:
            self._publish_all(tx)

    def _publish_all(self, tx: Tx) -> None:
        if self._publish is not None:
            for message, context in tx.messages:
                self._publish(message, context)

    async def write(self, fn: Callable[[Tx], T], *, durable: bool = True) -> T:
        """Run `fn(tx)` in a `BEGIN IMMEDIATE` transaction on the store's thread.

        Group commit: writes that arrive while a transaction commits wait, then commit
        together in the next one, each in a savepoint of its own: a write that raises is
        rolled back alone and its caller gets its error; the others commit. Messages `fn`
        queued with `tx.publish` are published after the shared COMMIT, in order (none
        for a write rolled back). A cancellation waits for the transaction to finish: a
        write is never half-done. `durable=False` lets the commit skip waiting for the
        disk (`synchronous=NORMAL`) when every write of its group allows it: it is atomic
        and stays consistent, but a power loss may undo it until the next durable commit.
        Only for writes whose loss is harmless (a record that something was sent, when
        sending it again is safe).
        """
        self.db  # noqa: B018 - raises when the store is not open
        write = _Write(fn, durable)
        with anyio.CancelScope(shield=True):
            self._queued.append(write)
            if self._leading:
                await write.woken.wait()
            while not write.done:  # this caller leads: it commits everything queued
                self._leading = True
                group, self._queued = self._queued, []
                try:
                    await anyio.to_thread.run_sync(self._commit, group, limiter=self._limiter)
                finally:
                    for w in group:
                        w.done = True
                    self._publish_done(group)
                    if self._queued:  # the next in line leads the next group
                        self._queued[0].woken.set()
                    else:
                        self._leading = False
                    for w in group:
                        w.woken.set()
        if write.error is not None:
            if isinstance(write.error, sqlite3.OperationalError | OSError) and _disk_full(
                write.error
            ):
                raise Refused(
                    f"the disk holding {self.path.parent} is full: nothing was written; "
                    "free some space and try again"
                ) from write.error
            raise write.error
        return cast(T, write.result)

    def _commit(self, group: list[_Write]) -> None:
        """One transaction for `group` (on the store's thread): a savepoint per write when
        there are several. Each write ends with its result or its error."""
        conn = self.db.conn
        durable = any(w.durable for w in group)
        alone = len(group) == 1
        if not durable:
            conn.execute("PRAGMA synchronous = NORMAL")
        try:
            conn.execute("BEGIN IMMEDIATE")
            for w in group:
                w.tx = Tx(self.db)
                if alone:
                    w.result = w.fn(w.tx)
                    continue
                conn.execute("SAVEPOINT write")
                try:
                    w.result = w.fn(w.tx)
                except Exception as e:
                    if not conn.in_transaction:  # the error undid the whole transaction
                        raise
                    conn.execute("ROLLBACK TO write")
                    w.error, w.tx = e, None
                conn.execute("RELEASE write")
            conn.execute("COMMIT")
        except BaseException as e:
            if conn.in_transaction:  # also when the COMMIT itself failed (a full disk)
                conn.execute("ROLLBACK")
            for w in group:  # nothing of the group was written
                w.tx = None
                if w.error is None:
                    w.error = e
            if not isinstance(e, Exception):
                raise
        finally:
            if not durable:
                conn.execute("PRAGMA synchronous = FULL")

    def _publish_done(self, group: list[_Write]) -> None:
        for w in group:
            if w.error is None and w.tx is not None:
                self._publish_all(w.tx)

    async def read(self, fn: Callable[[sqlite_utils.Database], T]) -> T:
        """Run `fn(db)` on the store's read connection, in a thread of its own: it sees
        every committed write and never waits for one in progress."""
        self.db  # noqa: B018 - raises when the store is not open

        def run() -> T:
            return fn(self._read_db())

        return await anyio.to_thread.run_sync(run, limiter=self._read_limiter)
