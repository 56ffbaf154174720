"""What `agentic.status` shows of a task: its record, its runs, what git says of its
branch and workspace, and the end of its latest run's output; and the short answer every
action that starts or moves a task returns."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread

from fleetbus.bus.errors import BusError
from fleetbus.plugins.runner.processes import tail

from . import git, worktree
from .models import RANK_PRIORITY, DispatchedTask, TaskInfo, TaskList, TaskQuery, TaskRun
from .tasks import Row

if TYPE_CHECKING:
    from .service import Agentic

LOG_TAIL = 2000


async def task_list(svc: Agentic, req: TaskQuery) -> TaskList:
    rows, counts = await svc.tasks.listing(
        task_id=req.task_id, workspace=req.workspace, status=req.status, limit=req.limit
    )
    return TaskList(tasks=[await task_info(svc, row) for row in rows], counts=counts)


async def task_info(svc: Agentic, task: Row) -> TaskInfo:
    runs = await svc.tasks.runs_of(task["id"])
    tokens, cost = await svc.tasks.totals(task["id"])
    ahead: git.Ahead | None = None
    uncommitted = task["uncommitted"]
    path = Path(task["path"]) if task["path"] else None
    if path is not None:
        try:
            ahead, state = await anyio.to_thread.run_sync(look, svc.root, path, task["base"])
            uncommitted = state.uncommitted
        except git.GitError:
            ahead = None
    log_tail = ""
    if task["run_id"]:
        try:
            found = await svc.hub.bus.perform("runner.status", {"run_id": task["run_id"]})
            if found.runs and found.runs[0].log:
                log_tail = await anyio.to_thread.run_sync(tail, Path(found.runs[0].log), LOG_TAIL)
        except BusError:
            pass
    return TaskInfo(
        task_id=task["id"],
        repo=task["repo"],
        task=task["task"],
        agent=task["agent"],
        model=task["model"],
        labels=task["labels"],
        priority=RANK_PRIORITY[task["priority"]],
        status=task["status"],
        reason=task["reason"],
        workspace=task["workspace"],
        path=task["path"],
        branch=task["branch"],
        base=task["base"],
        retries=task["retries"],
        max_retries=task["max_retries"],
        next_attempt_at=task["next_attempt"],
        question=task["question"],
        answer=task["answer"],
        progress=task["progress"],
        tokens=tokens,
        cost_usd=cost,
        commits_ahead=len(ahead.commits) if ahead else None,
        files_changed=[f.path for f in ahead.files] if ahead else [],
        uncommitted=uncommitted,
        log_tail=log_tail,
        created_at=task["created_at"],
        ended_at=task["ended_at"],
        merged=task["merged"],
        runs=[
            TaskRun(
                run_id=r["run_id"],
                attempt=r["attempt"],
                status=r["status"],
                exit_code=r["exit_code"],
                started_at=r["started_at"],
                ended_at=r["ended_at"],
                prompt_sha256=r["prompt_sha256"],
                tokens=r["tokens"],
                cost_usd=r["cost_usd"],
            )
            for r in runs
        ],
    )


def look(root: Path, path: Path, base: str) -> tuple[git.Ahead, git.WorkState]:
    if not worktree.inside(root, path) or not path.is_dir():
        raise git.GitError(f"workspace {path} is gone")
    return git.ahead(path, base), git.work_state(path)


def answer(task: Row) -> DispatchedTask:
    return DispatchedTask(
        task_id=task["id"],
        workspace=task["workspace"],
        branch=task["branch"],
        agent=task["agent"],
        status=task["status"],
        reason=task["reason"],
        run_id=task["run_id"],
    )
