"""Every SQL statement of the runner: the `runs` table (the persistent queue and history)
and the `pools` table (backoff), and nothing else.

Runs move `queued` -> `running` -> an end, each move guarded by the state it leaves:
- a claim takes only a `queued` run and gives the start the next `attempt` number;
- an end applies only to the `running` run of its own attempt, so a stale end (of an
  attempt superseded by a newer start) or a duplicate end changes nothing;
- a cancel takes only `queued` runs; a merge only a `queued` run.

`RunQueue` runs each statement in its own transaction; `record_end` and `record_backoff`
are statements for a caller's transaction (the settle records a batch of ends in one).
Never publishes a message, never looks at a process or at the runner's live state.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetbus.bus import Store, Tx

from .runs import Ending

Row = dict[str, Any]
Listing = tuple[dict[str, int], list[Row]]
STATUS_COLUMNS = (
    "id, workspace, agent, model, priority, status, reason, pid, created_at, not_before, "
    "started_at, ended_at, exit_code, run_dir, usage, question, previous_run"
)


@dataclass(frozen=True)
class Snapshot:
    """What a starting runner reads: running runs, queued counts, pool backoffs."""

    running: list[Row]
    queued_counts: list[Row]  # agent, workspace, n
    pools: list[Row]


@dataclass(frozen=True)
class Filter:
    """Runs matching every given field (`runner.status`) or any of them (`runner.kill`)."""

    run_id: str | None = None
    workspace: str | None = None
    status: str | None = None
    agent: str | None = None

    def where(self, join: str, empty: str) -> tuple[str, list[Any]]:
        clauses, params = [], []
        for column, value in (
            ("id", self.run_id),
            ("workspace", self.workspace),
            ("status", self.status),
            ("agent", self.agent),
        ):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        return f" {join} ".join(clauses) or empty, params


def record_end(tx: Tx, run_id: str, attempt: int, end: Ending) -> bool:
    """Record how attempt `attempt` of a running run ended; False (nothing changed) when
    the run is not running that attempt: the end is stale or a duplicate."""
    cursor = tx.execute(
        "UPDATE runs SET status = ?, reason = ?, exit_code = ?, ended_at = ?, usage = ?, "
        "question = ? WHERE id = ? AND status = 'running' AND attempt = ?",
        [
            end.status,
            end.reason,
            end.exit_code,
            end.ended_at,
            json.dumps(end.usage) if end.usage else None,
            end.question,
            run_id,
            attempt,
        ],
    )
    return cursor.rowcount > 0


def record_backoff(tx: Tx, pool: str, until: float, reason: str) -> None:
    tx.execute(
        "INSERT INTO pools (pool, backoff_until, reason) VALUES (?, ?, ?) "
        "ON CONFLICT (pool) DO UPDATE SET backoff_until = excluded.backoff_until, "
        "reason = excluded.reason",
        [pool, until, reason],
    )


class RunQueue:
    """The runner's statements over the hub's store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- startup -----------------------------------------------------------------------------
    async def snapshot(self) -> Snapshot:
        def read(db: Any) -> Snapshot:
            return Snapshot(
                running=[
                    dict(r) for r in db.execute("SELECT * FROM runs WHERE status = 'running'")
                ],
                queued_counts=[
                    dict(r)
                    for r in db.execute(
                        "SELECT agent, workspace, count(*) AS n FROM runs "
                        "WHERE status = 'queued' GROUP BY agent, workspace"
                    )
                ],
                pools=[dict(r) for r in db.execute("SELECT * FROM pools")],
            )

        return await self.store.read(read)

    async def starts_since(self, agent: str, since: float) -> tuple[int, float | None]:
        """How many runs of `agent` started since `since`, and when the last one did."""

        def count(db: Any) -> tuple[int, float | None]:
            row = db.execute(
                "SELECT coalesce(sum(started_at >= ?), 0), max(started_at) FROM runs "
                "WHERE agent = ?",
                [since, agent],
            ).fetchone()
            return int(row[0]), row[1]

        return await self.store.read(count)

    async def requeue(self, run_id: str, attempt: int) -> bool:
        """Put back a claimed run whose process never started; False if it moved on."""

        def requeue(tx: Tx) -> bool:
            return (
                tx.execute(
                    "UPDATE runs SET status = 'queued', started_at = NULL, run_dir = NULL "
                    "WHERE id = ? AND status = 'running' AND attempt = ?",
                    [run_id, attempt],
                ).rowcount
                > 0
            )

        return await self.store.write(requeue)

    async def adopt(
        self, run_id: str, attempt: int, pid: int, proc_start: float, run_dir: str, started: float
    ) -> None:
        """Record the process of a running run a new hub adopted."""
        await self.store.write(
            lambda tx: tx.execute(
                "UPDATE runs SET pid = ?, proc_start = ?, run_dir = ?, "
                "started_at = coalesce(started_at, ?) "
                "WHERE id = ? AND status = 'running' AND attempt = ?",
                [pid, proc_start, run_dir, started, run_id, attempt],
            )
        )

    # -- dispatch ----------------------------------------------------------------------------
    async def by_idempotency_key(self, key: str) -> Row | None:
        row = await self.store.read(
            lambda db: db.execute("SELECT * FROM runs WHERE idempotency_key = ?", [key]).fetchone()
        )
        return dict(row) if row is not None else None

    async def insert(self, row: Row) -> int:
        """Insert a run (the columns of `row`); its `seq`."""

        def insert(tx: Tx) -> int:
            cursor = tx.execute(
                f"INSERT INTO runs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                list(row.values()),
            )
            return int(cursor.lastrowid or 0)

        return await self.store.write(insert)

    async def waiting_in(self, workspace: str, debounce_s: float) -> list[Row]:
        """The queued runs of `workspace` in age order: id, agent, model, prompt_bytes and
        `merged_at` (when its last prompt came: `not_before` minus the debounce window)."""

        def read(db: Any) -> list[Row]:
            return [
                dict(r)
                for r in db.execute(
                    "SELECT id, agent, model, length(CAST(prompt AS BLOB)) AS prompt_bytes, "
                    "max(created_at, not_before - ?) AS merged_at FROM runs "
                    "WHERE workspace = ? AND status = 'queued' ORDER BY seq",
                    [debounce_s, workspace],
                )
            ]

        return await self.store.read(read)

    async def merge(
        self, run_id: str, prompt: str, priority: int, not_before: float, mode: str
    ) -> Row | None:
        """Append `prompt` to queued run `run_id`: the more urgent priority wins, and a
        followup makes it a followup. None when the run is no longer queued."""

        def merge(tx: Tx) -> Row | None:
            row = tx.execute(
                "UPDATE runs SET prompt = prompt || ? || ?, not_before = ?, "
                "priority = min(priority, ?), "
                "session_mode = CASE WHEN ? = 'followup' THEN 'followup' ELSE session_mode END "
                "WHERE id = ? AND status = 'queued' RETURNING *",
                ["\n\n", prompt, not_before, priority, mode, run_id],
            ).fetchone()
            return dict(row) if row is not None else None

        return await self.store.write(merge)

    async def previous_run(self, workspace: str) -> str | None:
        """The run that started last in `workspace` (running or ended); runs cancelled
        before they started do not count."""
        return await self.store.read(lambda db: previous_in(db, workspace))

    async def position(self, priority: int, seq: int) -> int:
        """1-based place of a queued run among all queued runs."""

        def position(db: Any) -> int:
            # two range counts on the (status, priority, seq) index, not one OR over all
            before = db.execute(
                "SELECT count(*) FROM runs WHERE status = 'queued' AND priority < ?", [priority]
            ).fetchone()[0]
            same = db.execute(
                "SELECT count(*) FROM runs WHERE status = 'queued' AND priority = ? AND seq < ?",
                [priority, seq],
            ).fetchone()[0]
            return 1 + int(before) + int(same)

        return await self.store.read(position)

    # -- the drain ---------------------------------------------------------------------------
    async def claim_next(
        self, wanted: list[Pick], now: float, runs_dir: Path
    ) -> tuple[Row | None, list[float]]:
        """Claim the queued run that goes first among the first each of `wanted` may start
        (priority, then age), in one transaction: its row (None: nothing may start), and
        when runs in their debounce window may start."""

        def claim(tx: Tx) -> tuple[Row | None, list[float]]:
            picked = [pick_in(tx, pick, now) for pick in wanted]
            later = [when for _, when in picked if when is not None]
            heads = [row for row, _ in picked if row is not None]
            if not heads:
                return None, later
            best = min(heads, key=lambda row: (row["priority"], row["seq"]))
            previous = (
                previous_in(tx, best["workspace"]) if best["session_mode"] == "followup" else None
            )
            return claim_in(tx, best["id"], now, str(runs_dir / best["id"]), previous), later

        return await self.store.write(claim)

    async def context_of(self, run_id: str) -> Row | None:
        """What a followup is told about run `run_id`: status, exit code, run dir, question."""
        row = await self.store.read(
            lambda db: db.execute(
                "SELECT status, exit_code, run_dir, question FROM runs WHERE id = ?", [run_id]
            ).fetchone()
        )
        return dict(row) if row is not None else None

    # -- ends --------------------------------------------------------------------------------
    async def cancel_queued(self, ids: list[str], reason: str, now: float) -> list[Row]:
        """Cancel those of `ids` that are still queued; their id, agent, workspace, model
        and origin."""

        def cancel(tx: Tx) -> list[Row]:
            marks = ",".join("?" * len(ids))
            return [
                dict(r)
                for r in tx.execute(
                    "UPDATE runs SET status = 'cancelled', reason = ?, ended_at = ? "
                    f"WHERE status = 'queued' AND id IN ({marks}) "
                    "RETURNING id, agent, workspace, model, origin",
                    [reason, now, *ids],
                )
            ]

        return await self.store.write(cancel) if ids else []

    # -- reads -------------------------------------------------------------------------------
    async def queued_ids(self, matching: Filter | None) -> list[str]:
        """Queued runs matching any field of `matching` (None: every queued run)."""
        where, params = matching.where("OR", "0") if matching is not None else ("1", [])
        return await self.store.read(
            lambda db: [
                r[0]
                for r in db.execute(
                    f"SELECT id FROM runs WHERE status = 'queued' AND ({where})", params
                )
            ]
        )

    async def status_of(self, run_id: str) -> str | None:
        row = await self.store.read(
            lambda db: db.execute("SELECT status FROM runs WHERE id = ?", [run_id]).fetchone()
        )
        return str(row[0]) if row is not None else None

    async def listing(self, matching: Filter, limit: int, counted: bool = True) -> Listing:
        """Counts by status of the runs matching every field (unless not `counted`), and
        the newest `limit`."""
        where, params = matching.where("AND", "1")

        def read(db: Any) -> Listing:
            sql = f"SELECT status, count(*) FROM runs WHERE {where} GROUP BY status"
            counts = {r[0]: r[1] for r in db.execute(sql, params)} if counted else {}
            rows = [
                dict(r)
                for r in db.execute(
                    f"SELECT {STATUS_COLUMNS} FROM runs WHERE {where} ORDER BY seq DESC LIMIT ?",
                    [*params, limit],
                )
            ]
            return counts, rows

        return await self.store.read(read)

    async def finished_since(self, since: float, limit: int) -> list[Row]:
        """Runs that ended after `since`, oldest end first."""

        def read(db: Any) -> list[Row]:
            sql = (
                f"SELECT {STATUS_COLUMNS} FROM runs WHERE ended_at > ? "
                "AND status NOT IN ('queued', 'running') ORDER BY ended_at, seq LIMIT ?"
            )
            return [dict(r) for r in db.execute(sql, [since, limit])]

        return await self.store.read(read)

    async def newest_per_workspace(self, workspace: str | None) -> list[Row]:
        """The newest run of each workspace (or of `workspace`): workspace, id, status, agent."""

        def read(db: Any) -> list[Row]:
            if workspace is not None:
                sql = (
                    "SELECT workspace, id, status, agent FROM runs WHERE workspace = ? "
                    "ORDER BY seq DESC LIMIT 1"
                )
                return [dict(r) for r in db.execute(sql, [workspace])]
            sql = (
                "SELECT workspace, id, status, agent FROM runs WHERE seq IN "
                "(SELECT max(seq) FROM runs GROUP BY workspace)"
            )
            return [dict(r) for r in db.execute(sql)]

        return await self.store.read(read)


@dataclass(frozen=True)
class Pick:  # what the drain may start of one agent: not in `busy` workspaces, `full` models
    agent: str
    busy: list[str]
    full: list[str]


def pick_in(db: Any, pick: Pick, now: float) -> tuple[Row | None, float | None]:
    """The first queued run of `pick.agent` that may start now, skipping its busy
    workspaces, its full models and runs still in their debounce: one indexed query. With
    none: when the first run in its debounce window may start, if any."""
    sql = (
        "SELECT id, seq, priority, model, workspace, session_mode FROM runs "
        "WHERE status = 'queued' AND agent = ? AND not_before <= ?"
    )
    params: list[Any] = [pick.agent, now]
    if pick.busy:
        sql += f" AND workspace NOT IN ({','.join('?' * len(pick.busy))})"
        params += pick.busy
    if pick.full:
        sql += f" AND (model IS NULL OR model NOT IN ({','.join('?' * len(pick.full))}))"
        params += pick.full
    sql += " ORDER BY priority, seq LIMIT 1"
    row = db.execute(sql, params).fetchone()
    if row is not None:
        return dict(row), None
    later = db.execute(
        "SELECT min(not_before) FROM runs WHERE status = 'queued' AND agent = ? AND not_before > ?",
        [pick.agent, now],
    ).fetchone()[0]
    return None, later


def previous_in(db: Any, workspace: str) -> str | None:
    """`RunQueue.previous_run` on a connection or in a transaction."""
    row = db.execute(
        "SELECT id FROM runs WHERE workspace = ? AND started_at IS NOT NULL "
        "ORDER BY started_at DESC, seq DESC LIMIT 1",
        [workspace],
    ).fetchone()
    return str(row[0]) if row else None


def claim_in(tx: Tx, run_id: str, now: float, run_dir: str, previous: str | None) -> Row | None:
    """Start queued run `run_id` as its next attempt; None when it is not queued."""
    row = tx.execute(
        "UPDATE runs SET status = 'running', attempt = attempt + 1, reason = '', "
        "started_at = ?, run_dir = ?, previous_run = ? "
        "WHERE id = ? AND status = 'queued' RETURNING *",
        [now, run_dir, previous, run_id],
    ).fetchone()
    return dict(row) if row is not None else None
