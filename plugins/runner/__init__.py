"""The `runner` service: agent processes, lanes, the persistent priority queue.

Actions (all exposed as MCP tools): `runner.dispatch`, `runner.status`, `runner.start`,
`runner.stop`, `runner.kill`, `runner.poke`. Queries: `WorkspaceQuery`, `FinishedRuns`. Messages:
`runner.run_queued`, `runner.run_started`, `runner.run_completed`,
`runner.queue_drained`, `runner.rate_limit_detected`, and `channel` events on
`agent.status` (each start and finish) and `fleet` (queue drained, rate limits).
"""

from __future__ import annotations

from typing import Any

from fleetbus.bus import ConfigRegistrar, Context, StashKey, hookimpl
from fleetbus.bus.actions import ActionRegistrar
from fleetbus.bus.hub import Hub
from fleetbus.bus.queries import QueryRegistrar
from fleetbus.bus.store import MigrationsRegistrar

from .config import AGENTS, DISPATCH
from .models import (
    DispatchInput,
    DispatchResult,
    FinishedRuns,
    FreeSlots,
    KillInput,
    KillResult,
    RunInfo,
    StateResult,
    StatusInput,
    StatusResult,
    WorkspaceInfo,
    WorkspaceQuery,
)
from .schema import migrations
from .service import Runner

__all__ = ["FinishedRuns", "Runner", "WorkspaceQuery", "runner_of"]

RUNNER = StashKey[Runner]()


def runner_of(hub: Hub) -> Runner:
    """The runner of `hub`, kept in its stash (created on first use, once the config is
    loaded)."""
    runner = hub.stash.get(RUNNER, None)
    if runner is None:
        runner = hub.stash[RUNNER] = Runner(hub)
    return runner


@hookimpl
def register_config(register: ConfigRegistrar) -> None:
    register(AGENTS)
    register(DISPATCH)


@hookimpl
def register_migrations(register: MigrationsRegistrar) -> None:
    register(migrations)


@hookimpl
def register_actions(register: ActionRegistrar, hub: Hub) -> None:
    @register("runner.dispatch", exposed=True)
    async def dispatch(req: DispatchInput, ctx: Context) -> DispatchResult:
        """Start a coding agent on a prompt in a workspace, or queue it; returns at once.

        The result says `running`, or `queued` with the reason (frozen, lane full,
        rate delay, backoff, session busy) and the place in the queue. Completion arrives
        as an `agent.status` channel event; `runner.status` shows every run.
        """
        return await runner_of(hub).dispatch(req, ctx)

    @register("runner.status", exposed=True, mutating=False)
    async def status(req: StatusInput) -> StatusResult:
        """Counts of runs by status, whether dispatch is frozen, lane usage, pools backed
        off, and the newest runs (filter by workspace, status, agent)."""
        return await runner_of(hub).status(req)

    @register("runner.start", exposed=True)
    async def start() -> StateResult:
        """Unfreeze dispatch and start queued runs that fit."""
        return await runner_of(hub).unfreeze()

    @register("runner.stop", exposed=True)
    async def stop() -> StateResult:
        """Freeze dispatch: running runs go on, nothing new starts until runner.start."""
        return await runner_of(hub).freeze()

    @register("runner.kill", exposed=True, destructive=True)
    async def kill(req: KillInput) -> KillResult:
        """Terminate runs. Without arguments: every running process group, cancel the
        queue, and freeze. With run_id, agent or workspace: only those runs."""
        return await runner_of(hub).kill(req)

    @register("runner.poke", exposed=True)
    async def poke() -> StateResult:
        """Drain the queue now instead of waiting for the next timer tick."""
        return await runner_of(hub).drain_now()


@hookimpl
def register_queries(register: QueryRegistrar, hub: Hub) -> None:
    @register(WorkspaceQuery)
    async def workspaces(q: WorkspaceQuery) -> list[WorkspaceInfo]:
        return await runner_of(hub).workspaces(q)

    @register(FreeSlots)
    async def free_slots(q: FreeSlots) -> int:
        runner = runner_of(hub)
        return runner.scheduler.free_slots(q.agent, q.model, runner.clock.now())

    @register(FinishedRuns)
    async def finished(q: FinishedRuns) -> list[RunInfo]:
        return await runner_of(hub).finished(q)


@hookimpl
async def startup(hub: Hub) -> None:
    await runner_of(hub).startup()


@hookimpl
def is_busy(hub: Hub) -> Any:
    runner = hub.stash.get(RUNNER, None)
    return runner is not None and runner.is_busy()
