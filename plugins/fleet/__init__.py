"""The `fleet` service: hubs on several machines share one dispatch queue on NATS
JetStream (fleet mode). Idle without a `fleet.url`; the runner stays local and knows no NATS.

Actions (exposed as MCP tools): `fleet.dispatch` (put a run on the fleet's queue; any hub
with a free lane for the agent runs it), `fleet.status` (nodes, lost nodes, queue depth)
and `fleet.tasks` (the tasks this hub sent and how they ended). Listens to the runner's
run messages (to settle fleet runs and mirror them to the other hubs).
"""

from __future__ import annotations

from typing import Any

from fleetbus.bus import ConfigRegistrar, Context, Message, StashKey, hookimpl
from fleetbus.bus.actions import ActionRegistrar
from fleetbus.bus.hub import Hub
from fleetbus.bus.store import MigrationsRegistrar
from fleetbus.bus.subscribers import SubscriberRegistrar
from fleetbus.plugins.agentic.models import DispatchTask
from fleetbus.plugins.runner.models import DispatchInput

from .config import FLEET
from .models import (
    FleetDispatchResult,
    FleetRecords,
    FleetStatus,
    FleetTasks,
    RecordsQuery,
    TasksQuery,
)
from .schema import migrations
from .service import Fleet

__all__ = ["Fleet", "fleet_of"]

FLEET_SERVICE = StashKey[Fleet]()


def fleet_of(hub: Hub) -> Fleet:
    """The fleet service of `hub` (created on first use, once the config is loaded)."""
    service = hub.stash.get(FLEET_SERVICE, None)
    if service is None:
        service = hub.stash[FLEET_SERVICE] = Fleet(hub)
    return service


@hookimpl
def register_config(register: ConfigRegistrar) -> None:
    register(FLEET)


@hookimpl
def register_migrations(register: MigrationsRegistrar) -> None:
    register(migrations)


@hookimpl
def register_actions(register: ActionRegistrar, hub: Hub) -> None:
    @register("fleet.dispatch", exposed=True)
    async def dispatch(req: DispatchInput, ctx: Context) -> FleetDispatchResult:
        """Put a run on the fleet's shared queue; returns at once with its task id.

        Any hub of the fleet with a free lane for the agent takes it (highest priority
        first, never more at once than the agent's fleet-wide cap); its start and its end
        arrive here as `agent.status` channel events naming the node. Refused when fleet
        mode is off or NATS is unreachable (use runner_dispatch to run on this hub).
        """
        return await fleet_of(hub).dispatch(req, ctx)

    @register("fleet.dispatch_task", exposed=True)
    async def dispatch_task(req: DispatchTask, ctx: Context) -> FleetDispatchResult:
        """Put an agentic task (a repository, labels, retries) on the fleet's queue.

        A repository URL may run on any hub of the fleet (it clones it); a local path only
        on this hub, the one machine that has it (the answer says so). The hub that takes
        it runs agentic.dispatch there; its start and end arrive here as channel events.
        Refused when no hub of the fleet has an agent with the labels.
        """
        return await fleet_of(hub).dispatch_task(req, ctx)

    @register("fleet.status", exposed=True, mutating=False)
    async def status() -> FleetStatus:
        """The fleet's nodes (lanes, running, queued, last heartbeat), the lost ones, the
        queue's depth per agent and priority, and whether this hub is connected."""
        return await fleet_of(hub).status()

    @register("fleet.tasks", exposed=True, mutating=False)
    async def tasks(req: TasksQuery) -> FleetTasks:
        """The tasks this hub put on the fleet's queue, newest first: where each ran and
        how it ended."""
        return await fleet_of(hub).tasks(req)

    @register("fleet.records", exposed=True, mutating=False)
    async def records(req: RecordsQuery) -> FleetRecords:
        """The fleet's audit on this hub, newest first: messages on the queue that were not
        dispatches (terminated), late results of superseded deliveries, dead letters."""
        return await fleet_of(hub).records(req)


@hookimpl
def register_subscribers(subscribe: SubscriberRegistrar, hub: Hub) -> None:
    if not hub.config[FLEET].url:
        return  # a hub alone pays nothing for fleet mode

    @subscribe("runner.run_started", "runner.run_completed", "agentic.task_ended", buffer=4096)
    async def on_run(message: Message) -> None:
        worker = fleet_of(hub).worker
        if worker is not None:
            worker.on_message(message)

    @subscribe("runner.*", "agentic.*", "fleet.task_*", buffer=1024)
    async def mirror(message: Message) -> None:
        origin = fleet_of(hub).origin
        if origin is not None:
            await origin.mirror(message)


@hookimpl
async def startup(hub: Hub) -> None:
    await fleet_of(hub).startup()


@hookimpl
async def shutdown(hub: Hub) -> None:
    await fleet_of(hub).shutdown()


@hookimpl
def is_busy(hub: Hub) -> Any:
    return fleet_of(hub).is_busy()
