"""Every SQL statement of the sync service.

Records enter the outbox once per state (their fingerprint is unique) and are never
deleted, so their seq only grows. A batch is a range of seqs: the oldest records not yet in
one, grouped when the line is empty and kept, with its id as the Idempotency-Key, until it
is sent or dropped, so a retry after any failure or restart sends the same records under
the same key. Forming a batch writes one small row (the records are not rewritten), and
its body is joined from the stored records when it is read. Never touches another
service's tables.
"""

from __future__ import annotations

import json
import secrets
from dataclasses import dataclass
from typing import Any

from fleetbus.bus import Store, Tx

from .models import AuditRecord


@dataclass(frozen=True)
class Batch:
    id: str
    attempts: int
    next_attempt: float
    body: str  # the records, one JSON array
    items: int
    created_at: float
    seq: int = 0  # its place in the line: its first record's seq

    @property
    def records(self) -> list[dict[str, Any]]:
        return list(json.loads(self.body))


class Outbox:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def add(self, items: list[tuple[str, dict[str, Any]]], now: float) -> int:
        """Queue records by fingerprint; those seen before are skipped. How many were new."""

        def write(tx: Tx) -> int:
            added = 0
            for fingerprint, record in items:
                cursor = tx.execute(
                    "INSERT OR IGNORE INTO outbox (fingerprint, record, created_at) "
                    "VALUES (?, ?, ?)",
                    [fingerprint, json.dumps(record, sort_keys=True), now],
                )
                added += cursor.rowcount
            return added

        return await self.store.write(write)

    async def head(self, size: int, now: float) -> Batch | None:
        """The batch at the head of the line, formed from the oldest queued records when
        none is open."""
        line = await self.line(size, now)
        return line[0] if line else None

    async def line(self, size: int, now: float) -> list[Batch]:
        """The open batches from the head of the line on, in order (at most FORM_AHEAD of
        them, and about READ_AHEAD_BYTES of bodies), formed from the oldest queued records
        when none is open."""
        return await self.store.write(lambda tx: line_of(tx, size, now))

    async def settle(self, ended: list[tuple[Batch, str, AuditRecord]]) -> None:
        """Batches were sent or dropped: they leave the line, the audit records each (one
        commit for all of them)."""

        def write(tx: Tx) -> None:
            for batch, state, audit in ended:
                tx.execute("UPDATE batches SET state = ? WHERE id = ?", [state, batch.id])
                record(tx, audit)
                if state == "sent":
                    set_state(tx, "last_push_at", repr(audit.at))
                    set_state(tx, "last_error", "")

        # not waiting for the disk: if a power loss undoes this, the batches are still in
        # line under their (durably formed) ids and are sent again with the same
        # Idempotency-Keys, which the API recognises
        await self.store.write(write, durable=False)

    async def retry_later(self, batch: Batch, attempts: int, at: float, error: str) -> None:
        def write(tx: Tx) -> None:
            tx.execute(
                "UPDATE batches SET attempts = ?, next_attempt = ?, last_error = ? WHERE id = ?",
                [attempts, at, error, batch.id],
            )
            set_state(tx, "last_error", error)

        await self.store.write(write)

    async def audit(self, entry: AuditRecord) -> None:
        await self.store.write(lambda tx: record(tx, entry))

    async def records(self, limit: int) -> list[dict[str, Any]]:
        def read(db: Any) -> list[dict[str, Any]]:
            rows = db.execute("SELECT * FROM audit ORDER BY seq DESC LIMIT ?", [limit]).fetchall()
            return [dict(r) for r in rows]

        return await self.store.read(read)

    async def summary(self) -> dict[str, Any]:
        def read(db: Any) -> dict[str, Any]:
            last = batched_up_to(db)
            unbatched, first_unbatched = db.execute(
                "SELECT count(*), min(seq) FROM outbox WHERE seq > ?", [last]
            ).fetchone()
            counts = {"queued": unbatched}
            for state, items in db.execute(
                "SELECT state, coalesce(sum(items), 0) FROM batches GROUP BY state"
            ).fetchall():
                key = "queued" if state == "open" else state
                counts[key] = counts.get(key, 0) + items
            head = db.execute(
                "SELECT attempts, next_attempt, last_error, first_seq FROM batches "
                "WHERE state = 'open' ORDER BY first_seq LIMIT 1"
            ).fetchone()
            oldest_seq = head[3] if head is not None else first_unbatched
            oldest = None
            if oldest_seq is not None:  # records are queued in order: the first waits longest
                (oldest,) = db.execute(
                    "SELECT created_at FROM outbox WHERE seq = ?", [oldest_seq]
                ).fetchone()
            state = dict(db.execute("SELECT key, value FROM state").fetchall())
            return {"counts": counts, "oldest": oldest, "head": head, "state": state}

        return await self.store.read(read)

    async def get_state(self, key: str) -> str | None:
        def read(db: Any) -> str | None:
            found = db.execute("SELECT value FROM state WHERE key = ?", [key]).fetchone()
            return str(found[0]) if found else None

        return await self.store.read(read)

    async def put_state(self, key: str, value: str) -> None:
        await self.store.write(lambda tx: set_state(tx, key, value))

    async def cache_context(self, agent_id: str, since: str | None, body: Any, at: float) -> None:
        def write(tx: Tx) -> None:
            tx.execute(
                "INSERT INTO context (agent_id, since, body, fetched_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (agent_id) DO UPDATE SET since = excluded.since, "
                "body = excluded.body, fetched_at = excluded.fetched_at",
                [agent_id, since, json.dumps(body), at],
            )

        await self.store.write(write)

    async def cached_context(self, agent_id: str) -> tuple[Any, float] | None:
        def read(db: Any) -> tuple[Any, float] | None:
            found = db.execute(
                "SELECT body, fetched_at FROM context WHERE agent_id = ?", [agent_id]
            ).fetchone()
            return (json.loads(found[0]), float(found[1])) if found else None

        return await self.store.read(read)


FORM_AHEAD = 50
"""Batches formed in one (durable) commit when the line is empty, and read at once."""
READ_AHEAD_BYTES = 4 * 2**20
"""Bytes of batch bodies read at once, at most (beyond the first batch)."""


def batched_up_to(db: Any) -> int:
    """The seq of the last record already in a batch (0: none)."""
    found = db.execute("SELECT last_seq FROM batches ORDER BY first_seq DESC LIMIT 1").fetchone()
    return int(found[0]) if found else 0


def line_of(tx: Tx, size: int, now: float) -> list[Batch]:
    """The open batches at the head; when there is none, the queued records are grouped
    into batches first (up to FORM_AHEAD of them, oldest records first)."""
    if tx.execute("SELECT 1 FROM batches WHERE state = 'open' LIMIT 1").fetchone() is None:
        seqs = [
            r[0]
            for r in tx.execute(
                "SELECT seq FROM outbox WHERE seq > ? ORDER BY seq LIMIT ?",
                [batched_up_to(tx), size * FORM_AHEAD],
            )
        ]
        for start in range(0, len(seqs), size):
            chunk = seqs[start : start + size]
            tx.execute(
                "INSERT INTO batches (id, first_seq, last_seq, items, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                ["b-" + secrets.token_hex(8), chunk[0], chunk[-1], len(chunk), now],
            )
    found: list[Batch] = []
    read = 0
    for row in tx.execute(
        "SELECT id, attempts, next_attempt, first_seq, last_seq, items, created_at FROM batches "
        "WHERE state = 'open' ORDER BY first_seq LIMIT ?",
        [FORM_AHEAD],
    ).fetchall():
        batch_id, attempts, next_attempt, first, last, items, created_at = row
        records = [
            r[0]
            for r in tx.execute(
                "SELECT record FROM outbox WHERE seq BETWEEN ? AND ? ORDER BY seq", [first, last]
            )
        ]
        body = "[" + ",".join(records) + "]"
        if found and read + len(body) > READ_AHEAD_BYTES:
            break
        found.append(Batch(batch_id, attempts, next_attempt, body, items, created_at, first))
        read += len(body)
    return found


def record(tx: Tx, entry: AuditRecord) -> None:
    tx.execute(
        "INSERT INTO audit (direction, outcome, agent_id, batch, attempts, reason, "
        "payload_bytes, items, at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [
            entry.direction,
            entry.outcome,
            entry.agent_id,
            entry.batch,
            entry.attempts,
            entry.reason,
            entry.payload_bytes,
            entry.items,
            entry.at,
        ],
    )


def set_state(tx: Tx, key: str, value: str) -> None:
    tx.execute(
        "INSERT INTO state (key, value) VALUES (?, ?) "
        "ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        [key, value],
    )
