"""The sync service's tables: the outbox and its batches, the ledger of what was sent, the
audit of drops and pulls, the pulled context, and its own watermarks.

Append-only migrations of the set `fleetbus.sync`; the SQL is in outbox.py.
"""

from __future__ import annotations

from sqlite_utils import Database, Migrations

migrations = Migrations("fleetbus.sync")


@migrations()
def m0001_initial(db: Database) -> None:
    db.execute(
        """
        CREATE TABLE outbox (
            seq INTEGER PRIMARY KEY,
            fingerprint TEXT NOT NULL UNIQUE,  -- kind:id:ended_at#runs: a state queued once
            record TEXT NOT NULL,              -- JSON
            created_at REAL NOT NULL
        )
        """
    )
    db.execute(
        """
        CREATE TABLE batches (
            id TEXT PRIMARY KEY,               -- also its Idempotency-Key, the same on retries
            first_seq INTEGER NOT NULL UNIQUE, -- its records: outbox seq first_seq..last_seq;
            last_seq INTEGER NOT NULL,         --   head of line: the lowest goes first
            items INTEGER NOT NULL,
            state TEXT NOT NULL DEFAULT 'open', -- open | sent | dropped
            attempts INTEGER NOT NULL DEFAULT 0,
            next_attempt REAL NOT NULL DEFAULT 0,
            last_error TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL
        )
        """
    )
    db.execute("CREATE INDEX batches_line ON batches (state, first_seq)")
    db.execute(
        """
        CREATE TABLE audit (
            seq INTEGER PRIMARY KEY,
            direction TEXT NOT NULL,           -- push | pull
            outcome TEXT NOT NULL,             -- sent | dropped | pulled | failed
            agent_id TEXT NOT NULL,
            batch TEXT,
            attempts INTEGER NOT NULL,
            reason TEXT NOT NULL,
            payload_bytes INTEGER NOT NULL,
            items INTEGER NOT NULL,
            at REAL NOT NULL
        )
        """
    )
    db.execute(
        "CREATE TABLE context (agent_id TEXT PRIMARY KEY, since TEXT, body TEXT, fetched_at REAL)"
    )
    db.execute("CREATE TABLE state (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
