"""The `agentic` service: coding tasks in git workspaces, routed to agents under
allowances, retried to a dead letter, blocked -> answer -> resume, reviewed and merged.

Actions (exposed as MCP tools): `agentic.dispatch`, `agentic.status`, `agentic.resume`,
`agentic.cancel`, `agentic.diff`, `agentic.merge`, `agentic.cleanup`, `agentic.report`.
Messages: `agentic.task_dispatched`, `agentic.task_claimed`,
`agentic.dispatch_failed_no_agent`, `agentic.dispatch_failed_quota`,
`agentic.quota_warning`, `agentic.quota_exceeded`, `agentic.usage_recorded`,
`agentic.task_dead_lettered`, `agentic.task_ended`, and `channel` events on `agent.task`
for the session that dispatched the task (completed, blocked, failed for good).
Built on the runner: it calls `runner.dispatch` and listens to the runner's messages.
"""

from __future__ import annotations

import logging
from typing import Any

from fleetbus.bus import ConfigRegistrar, Context, Message, Refused, StashKey, hookimpl
from fleetbus.bus.actions import ActionRegistrar
from fleetbus.bus.hub import Hub
from fleetbus.bus.queries import QueryRegistrar
from fleetbus.bus.store import MigrationsRegistrar
from fleetbus.bus.subscribers import SubscriberRegistrar

from . import review, views
from .config import AGENTIC
from .models import (
    CleanupInput,
    CleanupResult,
    DiffQuery,
    DiffResult,
    DispatchedTask,
    DispatchTask,
    FinishedTasks,
    MergeResult,
    MergeTask,
    Report,
    Reported,
    ResumeTask,
    TaskInfo,
    TaskList,
    TaskQuery,
    TaskRef,
    TaskState,
)
from .schema import migrations
from .service import Agentic

__all__ = ["Agentic", "FinishedTasks", "agentic_of"]

AGENTIC_SERVICE = StashKey[Agentic]()
log = logging.getLogger("fleetbus.agentic")


def agentic_of(hub: Hub) -> Agentic:
    """The agentic service of `hub` (created on first use, once the config is loaded).
    Refused when the runner, which it is built on, is not loaded."""
    if "runner" not in hub.plugins.names:
        raise Refused(
            "the agentic service needs the runner plugin, which is not loaded "
            "(FLEETBUS_PLUGINS / FLEETBUS_DISABLE_PLUGINS): enable it, or disable agentic too"
        )
    service = hub.stash.get(AGENTIC_SERVICE, None)
    if service is None:
        service = hub.stash[AGENTIC_SERVICE] = Agentic(hub)
    return service


@hookimpl
def register_config(register: ConfigRegistrar) -> None:
    register(AGENTIC)


@hookimpl
def register_migrations(register: MigrationsRegistrar) -> None:
    register(migrations)


@hookimpl
def register_actions(register: ActionRegistrar, hub: Hub) -> None:
    @register("agentic.dispatch", exposed=True)
    async def dispatch(req: DispatchTask, ctx: Context) -> DispatchedTask:
        """Hand a coding task on a git repository to an agent; returns at once.

        Prepares a workspace (a git worktree of a local repository, or a clone) on the
        branch agent/<task-slug>, picks an agent by labels and load when none is named,
        checks its allowance and starts a run. Failed runs are retried with backoff, then
        dead-lettered. How it ends arrives as an `agent.task` channel event; review with
        agentic.diff, merge with agentic.merge.
        """
        return await agentic_of(hub).dispatch(req, ctx)

    @register("agentic.status", exposed=True, mutating=False)
    async def status(req: TaskQuery) -> TaskList:
        """Tasks with their runs, question, usage, retries, branch, commits ahead of base,
        files changed (committed and not) and the end of the latest run's output."""
        return await views.task_list(agentic_of(hub), req)

    @register("agentic.resume", exposed=True)
    async def resume(req: ResumeTask, ctx: Context) -> DispatchedTask:
        """Answer a blocked task's question: a new run in the same workspace gets the
        question and the answer (in its prompt and as ANSWER.md)."""
        return await agentic_of(hub).resume(req, ctx)

    @register("agentic.cancel", exposed=True, destructive=True)
    async def cancel(req: TaskRef, ctx: Context) -> TaskState:
        """Cancel a task: its run is killed; its workspace and branch stay."""
        return await agentic_of(hub).cancel(req, ctx)

    @register("agentic.diff", exposed=True, mutating=False)
    async def diff(req: DiffQuery) -> DiffResult:
        """The task branch against its base: commits, files with lines added and removed,
        and the patch (cut at 200 KB, with a note)."""
        return await review.diff(agentic_of(hub), req)

    @register("agentic.merge", exposed=True)
    async def merge(req: MergeTask) -> MergeResult:
        """Merge the task branch into its base in the source repository (ff, merge or
        squash); a conflict or a dirty base is refused naming the files, nothing changed."""
        return await review.merge(agentic_of(hub), req)

    @register("agentic.cleanup", exposed=True, destructive=True)
    async def cleanup(req: CleanupInput) -> CleanupResult:
        """Remove finished tasks' workspaces (one task, or those ended more than
        older_than_days ago, 7 by default), never losing work: uncommitted changes are
        committed to salvage/<task-slug> first and task branches stay."""
        return await review.cleanup(agentic_of(hub), req)

    @register("agentic.report", exposed=True)
    async def report(req: Report) -> Reported:
        """What an agent calls about its own run ($FLEETBUS_RUN_ID): progress, a question
        (the task blocks when the run ends) or done."""
        return await agentic_of(hub).report(req)


@hookimpl
def register_queries(register: QueryRegistrar, hub: Hub) -> None:
    @register(FinishedTasks)
    async def finished(q: FinishedTasks) -> list[TaskInfo]:
        service = agentic_of(hub)
        rows = await service.tasks.ended_since(q.since, max(1, min(q.limit, 10_000)))
        return [await views.task_info(service, row) for row in rows]


@hookimpl
def register_subscribers(subscribe: SubscriberRegistrar, hub: Hub) -> None:
    @subscribe("runner.run_started", "runner.run_completed", buffer=4096)
    async def on_runner(message: Message) -> None:
        await agentic_of(hub).on_runner(message)


@hookimpl
async def startup(hub: Hub) -> None:
    if "runner" not in hub.plugins.names:
        log.warning("the agentic service is idle: the runner plugin it needs is not loaded")
        return
    await agentic_of(hub).startup()


@hookimpl
def is_busy(hub: Hub) -> Any:
    service = hub.stash.get(AGENTIC_SERVICE, None)
    return service is not None and service.busy
