"""Every SQL statement of the agentic service: `tasks`, `task_runs` and `usage`.

A task moves `pending` -> `running` -> `blocked` | `completed` | `failed` | `timeout` |
`cancelled`, or back to `pending` for a retry; each move names the states it may leave,
so two callers racing (a run's end and a cancel, say) change it once.
Never publishes a message, never looks at git or at a process.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from typing import Any

from fleetbus.bus import Store, Tx

from .allowance import Usage
from .models import FINAL

Row = dict[str, Any]


def decode(row: Row) -> Row:
    """A task row with its JSON columns decoded."""
    out = dict(row)
    out["labels"] = json.loads(out.get("labels") or "[]")
    out["origin"] = json.loads(out["origin"]) if out.get("origin") else {}
    out["uncommitted"] = json.loads(out["uncommitted"]) if out.get("uncommitted") else []
    return out


class TaskStore:
    """The agentic service's statements over the hub's store."""

    def __init__(self, store: Store) -> None:
        self.store = store

    # -- tasks -------------------------------------------------------------------------------
    async def insert(self, row: Row) -> None:
        values = dict(row)
        values["labels"] = json.dumps(values["labels"])
        values["origin"] = json.dumps(values["origin"]) if values.get("origin") else None
        columns = ", ".join(values)
        marks = ", ".join("?" for _ in values)

        def write(tx: Tx) -> None:
            tx.execute(f"INSERT INTO tasks ({columns}) VALUES ({marks})", list(values.values()))

        await self.store.write(write)

    async def open_workspaces(self) -> set[str]:
        """The workspaces of the tasks that have not ended."""
        marks = ", ".join("?" for _ in FINAL)

        def read(db: Any) -> set[str]:
            sql = f"SELECT DISTINCT workspace FROM tasks WHERE status NOT IN ({marks})"
            return {row[0] for row in db.execute(sql, list(FINAL))}

        return await self.store.read(read)

    async def one(self, where: str, params: list[Any]) -> Row | None:
        def read(db: Any) -> Row | None:
            found = db.execute(f"SELECT * FROM tasks WHERE {where} LIMIT 1", params).fetchone()
            return decode(dict(found)) if found else None

        return await self.store.read(read)

    async def get(self, task_id: str) -> Row | None:
        return await self.one("id = ?", [task_id])

    async def by_key(self, key: str) -> Row | None:
        return await self.one("idempotency_key = ?", [key])

    async def by_run(self, run_id: str) -> Row | None:
        return await self.one("id = (SELECT task_id FROM task_runs WHERE run_id = ?)", [run_id])

    async def listing(
        self, *, task_id: str | None, workspace: str | None, status: str | None, limit: int
    ) -> tuple[list[Row], dict[str, int]]:
        clauses, params = [], []
        for column, value in (("id", task_id), ("workspace", workspace), ("status", status)):
            if value is not None:
                clauses.append(f"{column} = ?")
                params.append(value)
        where = " AND ".join(clauses) or "1"

        def read(db: Any) -> tuple[list[Row], dict[str, int]]:
            rows = db.execute(
                f"SELECT * FROM tasks WHERE {where} ORDER BY seq DESC LIMIT ?", [*params, limit]
            ).fetchall()
            counts = db.execute("SELECT status, count(*) FROM tasks GROUP BY status").fetchall()
            return [decode(dict(r)) for r in rows], {s: n for s, n in counts}

        return await self.store.read(read)

    async def move(self, task_id: str, leaving: Iterable[str], **fields: Any) -> bool:
        """Set `fields` on the task if its status is one of `leaving`; False otherwise."""
        if "uncommitted" in fields:
            fields["uncommitted"] = json.dumps(fields["uncommitted"])
        sets = ", ".join(f"{k} = ?" for k in fields)
        states = list(leaving)
        marks = ", ".join("?" for _ in states)

        def write(tx: Tx) -> bool:
            cursor = tx.execute(
                f"UPDATE tasks SET {sets} WHERE id = ? AND status IN ({marks})",
                [*fields.values(), task_id, *states],
            )
            return cursor.rowcount > 0

        return await self.store.write(write)

    async def note(self, task_id: str, **fields: Any) -> None:
        """Set `fields` whatever the task's status (notes: progress, merged, path)."""
        sets = ", ".join(f"{k} = ?" for k in fields)

        def write(tx: Tx) -> None:
            tx.execute(f"UPDATE tasks SET {sets} WHERE id = ?", [*fields.values(), task_id])

        await self.store.write(write)

    async def delete(self, task_id: str) -> None:
        def write(tx: Tx) -> None:
            tx.execute("DELETE FROM task_runs WHERE task_id = ?", [task_id])
            tx.execute("DELETE FROM tasks WHERE id = ?", [task_id])

        await self.store.write(write)

    async def with_status(self, *statuses: str) -> list[Row]:
        marks = ", ".join("?" for _ in statuses)

        def read(db: Any) -> list[Row]:
            rows = db.execute(
                f"SELECT * FROM tasks WHERE status IN ({marks}) ORDER BY priority, seq",
                list(statuses),
            ).fetchall()
            return [decode(dict(r)) for r in rows]

        return await self.store.read(read)

    async def running_count(self, agent: str) -> int:
        def read(db: Any) -> int:
            return int(
                db.execute(
                    "SELECT count(*) FROM tasks WHERE agent = ? AND status = 'running'", [agent]
                ).fetchone()[0]
            )

        return await self.store.read(read)

    async def loads(self) -> dict[str, int]:
        """Running tasks per agent."""

        def read(db: Any) -> dict[str, int]:
            rows = db.execute(
                "SELECT agent, count(*) FROM tasks WHERE status = 'running' GROUP BY agent"
            ).fetchall()
            return {a: n for a, n in rows}

        return await self.store.read(read)

    async def ended_since(self, since: float, limit: int) -> list[Row]:
        """Tasks that reached an end after `since`, oldest end first."""

        def read(db: Any) -> list[Row]:
            rows = db.execute(
                "SELECT * FROM tasks WHERE ended_at > ? AND status IN "
                "('completed', 'failed', 'cancelled', 'timeout') ORDER BY ended_at, seq LIMIT ?",
                [since, limit],
            ).fetchall()
            return [decode(dict(r)) for r in rows]

        return await self.store.read(read)

    async def finished(self, ended_before: float | None) -> list[Row]:
        """Finished tasks whose workspace still exists, ended before `ended_before`."""

        def read(db: Any) -> list[Row]:
            rows = db.execute(
                "SELECT * FROM tasks WHERE status IN "
                "('completed', 'failed', 'cancelled', 'timeout') AND path IS NOT NULL "
                "AND (? IS NULL OR ended_at < ?) ORDER BY seq",
                [ended_before, ended_before],
            ).fetchall()
            return [decode(dict(r)) for r in rows]

        return await self.store.read(read)

    # -- runs --------------------------------------------------------------------------------
    async def start_run(
        self, task_id: str, leaving: Iterable[str], run: Row, **fields: Any
    ) -> bool:
        """Record a dispatched run and move the task to `running`, in one transaction."""
        states = list(leaving)
        marks = ", ".join("?" for _ in states)
        sets = ", ".join(f"{k} = ?" for k in fields)

        def write(tx: Tx) -> bool:
            cursor = tx.execute(
                f"UPDATE tasks SET status = 'running', run_id = ?, {sets} "
                f"WHERE id = ? AND status IN ({marks})",
                [run["run_id"], *fields.values(), task_id, *states],
            )
            if cursor.rowcount == 0:
                return False
            columns = ", ".join(run)
            tx.execute(
                f"INSERT INTO task_runs ({columns}) VALUES ({', '.join('?' for _ in run)})",
                list(run.values()),
            )
            return True

        return await self.store.write(write)

    async def end_run(self, run_id: str, **fields: Any) -> None:
        sets = ", ".join(f"{k} = ?" for k in fields)

        def write(tx: Tx) -> None:
            tx.execute(f"UPDATE task_runs SET {sets} WHERE run_id = ?", [*fields.values(), run_id])

        await self.store.write(write)

    async def runs_of(self, task_id: str) -> list[Row]:
        def read(db: Any) -> list[Row]:
            rows = db.execute(
                "SELECT * FROM task_runs WHERE task_id = ? ORDER BY attempt", [task_id]
            ).fetchall()
            return [dict(r) for r in rows]

        return await self.store.read(read)

    async def run(self, run_id: str) -> Row | None:
        def read(db: Any) -> Row | None:
            found = db.execute("SELECT * FROM task_runs WHERE run_id = ?", [run_id]).fetchone()
            return dict(found) if found else None

        return await self.store.read(read)

    # -- usage -------------------------------------------------------------------------------
    async def usage(self, agent: str, day: str) -> tuple[Usage, set[str]]:
        def read(db: Any) -> tuple[Usage, set[str]]:
            found = db.execute(
                "SELECT jobs, tokens, cost_usd, warned FROM usage WHERE agent = ? AND day = ?",
                [agent, day],
            ).fetchone()
            if found is None:
                return Usage(), set()
            jobs, tokens, cost, warned = found
            return Usage(jobs, tokens, cost), set(filter(None, warned.split(",")))

        return await self.store.read(read)

    async def add_usage(
        self, agent: str, day: str, *, jobs: int = 0, tokens: int = 0, cost_usd: float = 0.0
    ) -> None:
        def write(tx: Tx) -> None:
            tx.execute(
                "INSERT INTO usage (agent, day, jobs, tokens, cost_usd) VALUES (?, ?, ?, ?, ?) "
                "ON CONFLICT (agent, day) DO UPDATE SET jobs = jobs + excluded.jobs, "
                "tokens = tokens + excluded.tokens, cost_usd = cost_usd + excluded.cost_usd",
                [agent, day, jobs, tokens, cost_usd],
            )

        await self.store.write(write)

    async def mark_warned(self, agent: str, day: str, warned: set[str]) -> None:
        def write(tx: Tx) -> None:
            tx.execute(
                "UPDATE usage SET warned = ? WHERE agent = ? AND day = ?",
                [",".join(sorted(warned)), agent, day],
            )

        await self.store.write(write)

    async def totals(self, task_id: str) -> tuple[int, float]:
        """Tokens and cost of all of a task's runs."""

        def read(db: Any) -> tuple[int, float]:
            found = db.execute(
                "SELECT coalesce(sum(tokens), 0), coalesce(sum(cost_usd), 0) FROM task_runs "
                "WHERE task_id = ?",
                [task_id],
            ).fetchone()
            return int(found[0]), float(found[1])

        return await self.store.read(read)
