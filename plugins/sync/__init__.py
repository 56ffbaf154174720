"""The `sync` service: finished runs and tasks reported to a fleet API through a durable
outbox, with backoff, max attempts, an audit of drops and idempotency keys.

Actions (exposed as MCP tools): `sync.push`, `sync.pull`, `sync.status`, `sync.records`.
Listens to `runner.run_completed` and `agentic.task_ended`; asks the `FinishedRuns` and
`FinishedTasks` queries. With no `sync.url` it is idle and says so.
"""

from __future__ import annotations

from fleetbus.bus import ConfigRegistrar, Message, StashKey, hookimpl
from fleetbus.bus.actions import ActionRegistrar
from fleetbus.bus.hub import Hub
from fleetbus.bus.store import MigrationsRegistrar
from fleetbus.bus.subscribers import SubscriberRegistrar

from .config import SYNC
from .models import Pulled, PullInput, Records, RecordsQuery, SyncStatus
from .schema import migrations
from .service import Sync

__all__ = ["Sync", "sync_of"]

SYNC_SERVICE = StashKey[Sync]()


def sync_of(hub: Hub) -> Sync:
    """The sync service of `hub` (created on first use, once the config is loaded)."""
    service = hub.stash.get(SYNC_SERVICE, None)
    if service is None:
        service = hub.stash[SYNC_SERVICE] = Sync(hub)
    return service


@hookimpl
def register_config(register: ConfigRegistrar) -> None:
    register(SYNC)


@hookimpl
def register_migrations(register: MigrationsRegistrar) -> None:
    register(migrations)


@hookimpl
def register_actions(register: ActionRegistrar, hub: Hub) -> None:
    @register("sync.push", exposed=True)
    async def push() -> SyncStatus:
        """Send what is waiting now (backoff waits skipped) and say how it went."""
        return await sync_of(hub).push_now()

    @register("sync.pull", exposed=True)
    async def pull(req: PullInput) -> Pulled:
        """The fleet API's context for this agent; the cached copy when it is down."""
        return await sync_of(hub).pull(req)

    @register("sync.status", exposed=True, mutating=False)
    async def status() -> SyncStatus:
        """Records waiting, the oldest one's age, sent and dropped counts, the head batch's
        attempts and next try, the last push and the last error."""
        return await sync_of(hub).status()

    @register("sync.records", exposed=True, mutating=False)
    async def records(req: RecordsQuery) -> Records:
        """The audit, newest first: batches sent and dropped (with why), pulls."""
        return await sync_of(hub).records(req)


@hookimpl
def register_subscribers(subscribe: SubscriberRegistrar, hub: Hub) -> None:
    @subscribe("runner.run_completed", "agentic.task_ended", buffer=256)
    async def on_end(message: Message) -> None:
        # async: setting the catch-up event belongs on the event loop (a sync subscriber
        # runs in a worker thread, where an anyio Event must not be set), and costs no
        # thread hop per ended run
        sync_of(hub).ended()


@hookimpl
async def startup(hub: Hub) -> None:
    await sync_of(hub).startup()


@hookimpl
async def shutdown(hub: Hub) -> None:
    await sync_of(hub).shutdown()
