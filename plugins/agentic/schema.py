"""The agentic service's tables: tasks, their runs and each agent's daily usage.

Append-only migrations of the set `fleetbus.agentic`; the SQL that reads and writes these
tables is in tasks.py.
"""

from __future__ import annotations

from sqlite_utils import Database, Migrations

migrations = Migrations("fleetbus.agentic")


@migrations()
def m0001_initial(db: Database) -> None:
    db.execute(
        """
        CREATE TABLE tasks (
            seq INTEGER PRIMARY KEY,          -- age order
            id TEXT NOT NULL UNIQUE,
            repo TEXT NOT NULL,               -- the local toplevel or the URL
            repo_kind TEXT NOT NULL,          -- local | remote
            task TEXT NOT NULL,
            prompt TEXT NOT NULL,             -- what the next run is told
            agent TEXT NOT NULL,
            model TEXT,
            labels TEXT NOT NULL,             -- JSON list
            priority INTEGER NOT NULL,        -- 0 critical .. 3 low
            status TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT '',
            workspace TEXT NOT NULL UNIQUE,
            path TEXT,                        -- null once cleaned up
            branch TEXT NOT NULL,
            base TEXT NOT NULL,
            base_commit TEXT NOT NULL,
            max_retries INTEGER NOT NULL,
            retries INTEGER NOT NULL DEFAULT 0,
            next_attempt REAL,
            idempotency_key TEXT UNIQUE,
            origin TEXT,                      -- JSON: who asked (MCP session ...)
            run_id TEXT,                      -- the current or latest run
            question TEXT,
            answer TEXT,
            progress TEXT,
            merged TEXT,
            uncommitted TEXT,                 -- JSON list, at the latest run's end
            created_at REAL NOT NULL,
            ended_at REAL
        )
        """
    )
    db.execute("CREATE INDEX tasks_status ON tasks (status, priority, seq)")
    db.execute(
        """
        CREATE TABLE task_runs (
            run_id TEXT PRIMARY KEY,
            task_id TEXT NOT NULL,
            attempt INTEGER NOT NULL,
            prompt TEXT NOT NULL,
            prompt_sha256 TEXT NOT NULL,
            status TEXT NOT NULL,
            exit_code INTEGER,
            started_at REAL,
            ended_at REAL,
            tokens INTEGER,
            cost_usd REAL,
            question TEXT,                    -- reported with agentic.report kind=question
            blocked_before TEXT               -- JSON: BLOCKED.md as it was at the start
        )
        """
    )
    db.execute("CREATE INDEX task_runs_task ON task_runs (task_id, attempt)")
    db.execute(
        """
        CREATE TABLE usage (
            agent TEXT NOT NULL,
            day TEXT NOT NULL,                -- UTC date, YYYY-MM-DD
            jobs INTEGER NOT NULL DEFAULT 0,
            tokens INTEGER NOT NULL DEFAULT 0,
            cost_usd REAL NOT NULL DEFAULT 0,
            warned TEXT NOT NULL DEFAULT '',  -- limits already warned about today
            PRIMARY KEY (agent, day)
        )
        """
    )
