"""The run model: what a run is in memory, read from its `runs` row, and how it ended.

- `RunRef`: a run's identity and who asked for it (what every message about it carries);
- `ActiveRun`: a run whose process is alive, with its attempt (the fencing token of its
  start), pid, deadline and the events its supervisor sets;
- `Ending`: how a run ended, as recorded and announced; `outcome` decides its status.

Plain values: never touches the database, the bus or a process.
"""

from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from . import questions

MAX_ARG_PROMPT = 100 * 1024  # Linux caps one command-line argument at 128 KiB


def new_run_id() -> str:
    return f"r{int(time.time() * 1000):x}{secrets.token_hex(3)}"


def duration_text(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


def origin_of(row: dict[str, Any]) -> dict[str, str]:
    """Who asked for the run of `row` (its `origin` column is JSON)."""
    origin = row.get("origin")
    return json.loads(origin) if isinstance(origin, str) else dict(origin or {})


@dataclass
class RunRef:
    """What messages about a run carry: its identity and who asked for it."""

    run_id: str
    workspace: str
    agent: str
    model: str | None
    origin: dict[str, str]

    @classmethod
    def of(cls, row: dict[str, Any]) -> RunRef:
        return cls(row["id"], row["workspace"], row["agent"], row.get("model"), origin_of(row))


@dataclass
class ActiveRun(RunRef):
    """A run whose process is alive (or was, until it is settled)."""

    attempt: int  # which start of the run this is: its end applies to this attempt only
    pid: int
    started_at: float
    timeout_s: float
    run_dir: Path
    spawned_here: bool  # our child, reaped by us (False when adopted after a restart)
    proc_start: float | None = None
    stop_status: str | None = None  # cancelled | timeout, when the runner ended it
    stop_reason: str = ""
    exited: anyio.Event = field(default_factory=anyio.Event)
    done: anyio.Event = field(default_factory=anyio.Event)  # its end is recorded
    exit_code: int | None = None

    @classmethod
    def from_row(
        cls,
        row: dict[str, Any],
        *,
        pid: int,
        started_at: float,
        run_dir: Path,
        spawned_here: bool,
        proc_start: float | None = None,
    ) -> ActiveRun:
        """The live run of a `runs` row whose process is `pid`."""
        return cls(
            run_id=row["id"],
            workspace=row["workspace"],
            agent=row["agent"],
            model=row["model"],
            origin=origin_of(row),
            attempt=row["attempt"],
            pid=pid,
            started_at=started_at,
            timeout_s=row["timeout_s"],
            run_dir=run_dir,
            spawned_here=spawned_here,
            proc_start=proc_start,
        )

    @property
    def deadline(self) -> float:
        return self.started_at + self.timeout_s

    def request_stop(self, status: str, reason: str) -> bool:
        """Mark the run as ended by the runner; False when it already was."""
        if self.stop_status is None:
            self.stop_status, self.stop_reason = status, reason
            return True
        return False


@dataclass(frozen=True)
class Ending:
    """How a run ended: what its row records and its messages say."""

    status: str
    reason: str
    exit_code: int | None
    ended_at: float
    usage: dict[str, Any] | None = None
    question: str | None = None


def outcome(
    code: int | None, taken: questions.Taken, stopped: tuple[str, str] | None = None
) -> tuple[str, str]:
    """(status, reason) of an ended run: `stopped` when the runner ended it (or knows
    better), else `blocked` iff it exited 0 leaving a question, `completed` for other
    exits 0, `failed` for the rest. A question that could not be read says why."""
    if stopped is not None:
        status, reason = stopped
    elif code is None:
        status, reason = "failed", "the process ended without an exit status"
    elif code != 0:
        status, reason = "failed", f"exit {code}"
    elif taken.text is not None:
        return "blocked", f"question: {questions.first_line(taken.text)}"
    else:
        status, reason = "completed", ""
    if taken.problem:
        why = f"question not read: {taken.problem}"
        reason = f"{reason}; {why}" if reason else why
    return status, reason
