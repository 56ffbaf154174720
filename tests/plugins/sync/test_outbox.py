"""The outbox on a real SQLite file: batches are ranges of the oldest queued records, formed
once and kept (the same ids and records on every read), and the counts `sync.status`
reports."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetbus.bus import Store
from fleetbus.plugins.sync import outbox as outbox_module
from fleetbus.plugins.sync.models import AuditRecord
from fleetbus.plugins.sync.outbox import Outbox
from fleetbus.plugins.sync.schema import migrations

pytestmark = pytest.mark.anyio


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    store = Store(tmp_path / "sync.db")
    store.open()
    store.migrate([("sync", migrations)])
    try:
        yield store
    finally:
        store.close()


def items(start: int, n: int) -> list[tuple[str, dict[str, int]]]:
    return [(f"run:{i}", {"n": i}) for i in range(start, start + n)]


def sent() -> AuditRecord:
    return AuditRecord(
        direction="push", outcome="sent", agent_id="a", batch=None, attempts=1,
        reason="HTTP 200", payload_bytes=0, items=0, at=0.0,
    )  # fmt: skip


async def test_batches_are_ranges_formed_once_oldest_first(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(outbox_module, "FORM_AHEAD", 3)
    box = Outbox(store)
    assert await box.add(items(0, 25), 100.0) == 25
    assert await box.add(items(20, 10), 101.0) == 5  # fingerprints seen before are skipped

    line = await box.line(4, 200.0)  # 3 batches of 4 formed, the rest waits
    assert [[r["n"] for r in b.records] for b in line] == [
        [0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11],
    ]  # fmt: skip
    again = await box.line(4, 300.0)  # kept: the same ids, records and bodies
    assert [(b.id, b.body, b.created_at) for b in again] == [
        (b.id, b.body, b.created_at) for b in line
    ]
    assert len({b.id for b in line}) == 3
    assert json.loads(line[0].body) == line[0].records

    summary = await box.summary()
    assert summary["counts"] == {"queued": 30}
    assert summary["oldest"] == 100.0

    await box.settle([(b, "sent", sent()) for b in line[:2]])
    await box.settle([(line[2], "dropped", sent())])
    later = await box.add(items(30, 1), 102.0)
    assert later == 1
    # the line was empty: the records after the last batch are grouped next, in order
    line = await box.line(4, 400.0)
    assert [[r["n"] for r in b.records] for b in line] == [
        [12, 13, 14, 15], [16, 17, 18, 19], [20, 21, 22, 23],
    ]  # fmt: skip
    line = await box.line(4, 400.0)
    assert line[0].records[0] == {"n": 12}  # still open: the same head
    summary = await box.summary()
    assert summary["counts"] == {"queued": 19, "sent": 8, "dropped": 4}
    assert summary["head"][3] == line[0].seq


async def test_a_retried_batch_keeps_its_records_and_the_line_its_order(store: Store) -> None:
    box = Outbox(store)
    await box.add(items(0, 3), 100.0)
    head = (await box.line(2, 100.0))[0]
    await box.retry_later(head, 1, 150.0, "HTTP 500")
    await box.add(items(3, 2), 101.0)
    line = await box.line(2, 120.0)
    assert line[0].id == head.id and line[0].attempts == 1 and line[0].next_attempt == 150.0
    assert [b.records for b in line] == [[{"n": 0}, {"n": 1}], [{"n": 2}]]
    summary = await box.summary()
    assert summary["counts"] == {"queued": 5}
    assert summary["state"]["last_error"] == "HTTP 500"
