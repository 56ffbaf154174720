"""What is reported of a finished run or task, and the fingerprint of its state.

A fingerprint names one state of one thing (`run:<id>:<ended_at>#1`,
`task:<id>:<ended_at>#<runs>`), so the same state is queued once however often it is
seen (a message and a catch-up after a restart), while a task that ends again after a
resume is a new state and is reported again.
"""

from __future__ import annotations

from typing import Any

Item = tuple[str, dict[str, Any]]


def of_run(run: Any) -> Item:
    """A runner `RunInfo`."""
    record = {
        "kind": "run",
        "run_id": run.run_id,
        "workspace": run.workspace,
        "agent": run.agent,
        "model": run.model,
        "status": run.status,
        "reason": run.reason,
        "exit_code": run.exit_code,
        "question": run.question,
        "usage": run.usage,
        "created_at": run.created_at,
        "started_at": run.started_at,
        "ended_at": run.ended_at,
    }
    return f"run:{run.run_id}:{run.ended_at!r}#1", record


def of_task(task: Any) -> Item:
    """An agentic `TaskInfo`."""
    record = {
        "kind": "task",
        "task_id": task.task_id,
        "repo": task.repo,
        "task": task.task[:2000],
        "workspace": task.workspace,
        "agent": task.agent,
        "model": task.model,
        "branch": task.branch,
        "base": task.base,
        "status": task.status,
        "reason": task.reason,
        "question": task.question,
        "runs": [r.run_id for r in task.runs],
        "usage": {"tokens": task.tokens, "cost_usd": task.cost_usd},
        "commits": task.commits_ahead,
        "files_changed": task.files_changed[:200],
        "created_at": task.created_at,
        "ended_at": task.ended_at,
    }
    return f"task:{task.task_id}:{task.ended_at!r}#{len(task.runs)}", record
