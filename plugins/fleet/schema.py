"""The fleet plugin's tables: the tasks this hub put on the fleet's queue, the deliveries
it runs (with the reply subjects that ack them, so a restarted hub resumes its acks), and
an audit of refused messages, late results and dead letters.

Append-only migrations of the set `fleetbus.fleet`.
"""

from __future__ import annotations

from sqlite_utils import Database, Migrations

migrations = Migrations("fleetbus.fleet")


@migrations()
def m0001_initial(db: Database) -> None:
    db.execute(
        """
        CREATE TABLE fleet_tasks (             -- sent from here: the origin's view
            task_id TEXT PRIMARY KEY,
            agent TEXT NOT NULL,
            workspace TEXT NOT NULL,
            priority TEXT NOT NULL,
            status TEXT NOT NULL,              -- queued | running | a run's end | dead_lettered
            node TEXT,
            run_id TEXT,
            delivery INTEGER,
            exit_code INTEGER,
            reason TEXT NOT NULL DEFAULT '',
            created_at REAL NOT NULL,
            ended_at REAL
        )
        """
    )
    db.execute("CREATE INDEX fleet_tasks_created ON fleet_tasks (created_at)")
    db.execute(
        """
        CREATE TABLE fleet_runs (              -- run here: the executor's view
            task_id TEXT NOT NULL,
            delivery INTEGER NOT NULL,         -- its run: found by the key fleet:<task_id>
            task TEXT NOT NULL,                -- the task, JSON
            reply TEXT NOT NULL,               -- acks the task's delivery
            slot_reply TEXT NOT NULL,          -- gives the fleet-wide slot back
            state TEXT NOT NULL,               -- running | ended | superseded
            started_at REAL NOT NULL,
            PRIMARY KEY (task_id, delivery)
        )
        """
    )
    db.execute("CREATE INDEX fleet_runs_state ON fleet_runs (state)")
    db.execute(
        """
        CREATE TABLE fleet_audit (
            seq INTEGER PRIMARY KEY,
            what TEXT NOT NULL,                -- refused | late | dead_lettered
            task_id TEXT,
            detail TEXT NOT NULL,
            at REAL NOT NULL
        )
        """
    )
