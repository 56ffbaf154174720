"""What the runner shows: `runner.status` and the answers to `WorkspaceQuery`.

Reads the runs through the queue and the live state (frozen, lanes, backoff, live pids,
why a queued run waits); changes nothing. The counts of every run by status come from the
live state (`RunCounts`): a `runner.status` without filters and with `limit` 0 does not
touch SQLite at all.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import anyio.lowlevel

from . import questions
from .limits import hhmm
from .models import (
    PRIORITY_NAMES,
    LaneInfo,
    RunInfo,
    StatusResult,
    WorkspaceInfo,
)
from .queue import Filter, RunQueue
from .state import RunnerState

# questions listed whole in one runner.status answer (newest first); past that, quoted short
STATUS_QUESTION_BYTES = 1024 * 1024
EVERY_RUN = Filter()


def run_info(r: dict[str, Any], reason: str, pid: int | None, question: str | None) -> RunInfo:
    """A run's row as `runner.status` shows it."""
    return RunInfo(
        run_id=r["id"],
        workspace=r["workspace"],
        agent=r["agent"],
        model=r["model"],
        priority=PRIORITY_NAMES[r["priority"]],
        status=r["status"],
        reason=reason,
        pid=pid,
        created_at=r["created_at"],
        started_at=r["started_at"],
        ended_at=r["ended_at"],
        exit_code=r["exit_code"],
        log=str(Path(r["run_dir"]) / "output.log") if r["run_dir"] else None,
        usage=json.loads(r["usage"]) if r["usage"] else None,
        question=question,
        previous_run_id=r["previous_run"],
    )


async def runner_status(
    queue: RunQueue,
    state: RunnerState,
    matching: Filter,
    limit: int,
    *,
    why_queued: Callable[[dict[str, Any]], str],
    now: float,
    installed: Mapping[str, bool] | None = None,
) -> StatusResult:
    """Counts by status, frozen, lanes, backoff, and the newest `limit` runs matching."""
    counts: Mapping[str, int]
    if state.counts.loaded and matching == EVERY_RUN:  # counted in memory
        if limit:
            rows = (await queue.listing(matching, limit, counted=False))[1]
        else:  # still a checkpoint: a caller asking in a loop must not starve the others
            rows = []
            await anyio.lowlevel.checkpoint()
        counts = state.counts.by_status  # read after the rows: as fresh as they are
    else:
        counts, rows = await queue.listing(matching, limit)
    room = STATUS_QUESTION_BYTES
    runs = []
    for r in rows:
        active = state.active.get(r["id"])
        question = r["question"]
        if question is not None:
            size = len(question.encode())
            if size <= room:
                room -= size
            else:  # a long list of long questions must not make an answer too big to send
                question = (
                    f"{questions.snippet(question)} "
                    f"(cut: ask runner.status for run {r['id']} alone)"
                )
        reason = why_queued(r) if r["status"] == "queued" else r["reason"]
        runs.append(run_info(r, reason, active.pid if active else r["pid"], question))
    return StatusResult(
        running=counts.get("running", 0),
        queued=counts.get("queued", 0),
        completed=counts.get("completed", 0),
        failed=counts.get("failed", 0),
        blocked=counts.get("blocked", 0),
        cancelled=counts.get("cancelled", 0),
        timeout=counts.get("timeout", 0),
        total=sum(counts.values()),
        frozen=state.frozen,
        lanes={
            name: LaneInfo(
                running=n, limit=cap, installed=(installed or {}).get(name.split(":", 1)[0])
            )
            for name, (n, cap) in state.lanes.info().items()
        },
        backoff={
            name: f"until {hhmm(p.backoff_until)} UTC: {p.backoff_reason}"
            for name, p in state.pools.items()
            if p.backoff_until > now
        },
        runs=runs,
    )


async def workspaces(
    queue: RunQueue, root: Path, name: str | None, status: str | None
) -> list[WorkspaceInfo]:
    """Workspaces by name, or all, with their newest run; only those whose newest run has
    `status` when given."""
    infos = [
        WorkspaceInfo(
            name=r["workspace"],
            path=str(root / r["workspace"]),
            status=r["status"],
            run_id=r["id"],
            agent=r["agent"],
        )
        for r in await queue.newest_per_workspace(name)
    ]
    if status is not None:
        infos = [i for i in infos if i.status == status]
    return sorted(infos, key=lambda i: i.name)
