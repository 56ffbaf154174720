"""The runner's tables: runs (the persistent queue and history) and pools (backoff).

Append-only migrations of the set `fleetbus.runner`; the SQL that reads and writes these
tables is in queue.py.
"""

from __future__ import annotations

from sqlite_utils import Database, Migrations

migrations = Migrations("fleetbus.runner")


@migrations()
def m0001_initial(db: Database) -> None:
    db.execute(
        """
        CREATE TABLE runs (
            seq INTEGER PRIMARY KEY,          -- age order
            id TEXT NOT NULL UNIQUE,
            workspace TEXT NOT NULL,
            agent TEXT NOT NULL,
            model TEXT,
            prompt TEXT NOT NULL,
            priority INTEGER NOT NULL,        -- 0 critical .. 3 low
            session_mode TEXT NOT NULL,
            status TEXT NOT NULL,
            reason TEXT NOT NULL DEFAULT '',
            timeout_s REAL NOT NULL,
            idempotency_key TEXT UNIQUE,
            origin TEXT,                      -- JSON: who asked (MCP session ...)
            previous_run TEXT,                -- followup: the run whose context it continues
            created_at REAL NOT NULL,
            not_before REAL NOT NULL DEFAULT 0,
            started_at REAL,
            ended_at REAL,
            exit_code INTEGER,
            pid INTEGER,
            proc_start REAL,                  -- process start time: pid reuse guard
            run_dir TEXT,
            usage TEXT                        -- JSON
        )
        """
    )
    db.execute("CREATE INDEX runs_queue ON runs (status, agent, priority, seq)")
    db.execute("CREATE INDEX runs_order ON runs (status, priority, seq)")
    db.execute("CREATE INDEX runs_workspace ON runs (workspace, status)")
    db.execute("CREATE INDEX runs_agent_started ON runs (agent, started_at)")
    db.execute(
        """
        CREATE TABLE pools (
            pool TEXT PRIMARY KEY,
            backoff_until REAL NOT NULL,
            reason TEXT NOT NULL
        )
        """
    )


@migrations()
def m0002_run_question(db: Database) -> None:
    """The question a run left in its workspace (`.fleetbus/question.md`), taken when it ended."""
    db.execute("ALTER TABLE runs ADD COLUMN question TEXT")


@migrations()
def m0003_run_attempt(db: Database) -> None:
    """Each start of a run gets the next attempt number; an end applies to its own attempt
    only, so a stale or duplicate end changes nothing. Runs that started before count 1."""
    db.execute("ALTER TABLE runs ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0")
    db.execute("UPDATE runs SET attempt = 1 WHERE started_at IS NOT NULL")
