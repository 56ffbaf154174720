"""Reviewing and finishing a task's work: its diff against base, merging it into the
source repository, and removing finished workspaces without losing work.

Cleanup never removes work that exists nowhere else: uncommitted changes are committed to
`salvage/<task-slug>` first, the task branch stays, a worktree goes only with
`git worktree remove` (never `--force`), and a clone holding commits its remote lacks is
kept.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import anyio
import anyio.to_thread

from fleetbus.bus import Refused

from . import git, worktree
from .models import (
    ACTIVE,
    FINAL,
    Cleaned,
    CleanupInput,
    CleanupResult,
    DiffQuery,
    DiffResult,
    FileStat,
    MergeResult,
    MergeTask,
)
from .tasks import Row

if TYPE_CHECKING:
    from .service import Agentic


def where(task: Row) -> Path:
    """Where the task's branch can be read: the source repository for a local one (its
    worktree shares the refs), else its clone."""
    if task["repo_kind"] == "local":
        return Path(task["repo"])
    if not task["path"]:
        raise Refused(f"task {task['id']}'s clone was cleaned up; its branch went with it")
    return Path(task["path"])


async def diff(svc: Agentic, req: DiffQuery) -> DiffResult:
    task = await svc.need(req.task_id, "agentic.diff")
    where_ = where(task)

    def read() -> tuple[git.Ahead, git.Diff]:
        return (
            git.ahead(where_, task["base"], task["branch"]),
            git.diff(where_, task["base"], task["branch"], stat_only=req.stat_only),
        )

    try:
        ahead, found = await anyio.to_thread.run_sync(read)
    except git.GitError as e:
        raise Refused(f"agentic.diff: {e}") from None
    return DiffResult(
        task_id=task["id"],
        branch=task["branch"],
        base=task["base"],
        commits=[{"sha": c.sha, "subject": c.subject} for c in ahead.commits],
        files=[FileStat(path=f.path, added=f.added, removed=f.removed) for f in found.files],
        patch=found.patch,
        truncated=found.truncated,
        note=found.note,
    )


async def merge(svc: Agentic, req: MergeTask) -> MergeResult:
    task = await svc.need(req.task_id, "agentic.merge")
    if task["repo_kind"] != "local":
        raise Refused(
            f"agentic.merge: task {task['id']} works in a clone of {task['repo']}: push its "
            f"branch {task['branch']} and merge it there"
        )
    if task["status"] in ACTIVE:
        raise Refused(f"agentic.merge: task {task['id']} is still {task['status']}")
    message = f"Merge {task['branch']} (fleetbus task {task['id']})\n\n{task['task'][:500]}"
    try:
        merged = await anyio.to_thread.run_sync(
            git.merge, Path(task["repo"]), task["base"], task["branch"], req.strategy, message
        )
    except git.GitError as e:
        raise Refused(f"agentic.merge: {e}") from None
    await svc.tasks.note(task["id"], merged=f"{merged.strategy}:{merged.commit}")
    return MergeResult(
        task_id=task["id"],
        base=merged.base,
        branch=task["branch"],
        strategy=merged.strategy,
        commit=merged.commit,
    )


async def cleanup(svc: Agentic, req: CleanupInput) -> CleanupResult:
    if req.task_id is not None:
        task = await svc.need(req.task_id, "agentic.cleanup")
        if task["status"] not in FINAL:
            raise Refused(
                f"agentic.cleanup: task {task['id']} is {task['status']}: cancel it first, "
                "or wait for it to end"
            )
        rows = [task] if task["path"] else []
    else:
        days = req.older_than_days if req.older_than_days is not None else 7.0
        rows = await svc.tasks.finished(svc.clock.now() - days * 86400)
    cleaned, freed = [], 0
    for task in rows:
        result, size = await anyio.to_thread.run_sync(clean_one, svc.root, task)
        if result.removed:
            await svc.tasks.note(task["id"], path=None)
        freed += size
        cleaned.append(result)
    return CleanupResult(cleaned=cleaned, bytes_freed=freed)


def clean_one(root: Path, task: Row) -> tuple[Cleaned, int]:
    """Salvage, then remove one task's workspace (in a thread). Work that exists
    nowhere else is never removed: uncommitted changes go to `salvage/<slug>` first,
    the task branch stays, and a clone holding unpushed commits is kept."""
    path = Path(task["path"])
    slug = task["workspace"].rsplit("/", 1)[-1]
    base = {"task_id": task["id"], "workspace": task["workspace"]}
    if not path.exists():
        return Cleaned(**base, removed=True, salvaged=None, reason="already gone"), 0
    if not worktree.inside(root, path):
        return Cleaned(**base, removed=False, salvaged=None, reason="outside the root: kept"), 0
    salvaged = None
    try:
        worktree.drop_answer(path)
        salvaged = git.salvage(path, slug, f"fleetbus: salvage of task {task['id']}")
        size = git.dir_size(path)
        if task["repo_kind"] == "local":
            git.remove_worktree(Path(task["repo"]), path)
        else:
            if git.ahead(path, f"origin/{task['base']}").commits:
                reason = (
                    "kept: the clone holds commits that exist nowhere else; push "
                    f"{task['branch']}, then clean up"
                )
                return Cleaned(**base, removed=False, salvaged=salvaged, reason=reason), 0
            git.remove_clone(path)
    except git.GitError as e:
        return Cleaned(**base, removed=False, salvaged=salvaged, reason=f"kept: {e}"), 0
    reason = "removed" + (f"; uncommitted work saved on {salvaged}" if salvaged else "")
    return Cleaned(**base, removed=True, salvaged=salvaged, reason=reason), size
