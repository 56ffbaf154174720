"""The fleet service: connects the hub to NATS, puts dispatches on the fleet's queue, and
says how the fleet stands.

Connecting happens in the background: a hub whose NATS server cannot be reached (or
refuses it) starts anyway in local mode, says why in `fleet.status` and its log, and tries
again with backoff (1 s doubling to 30 s). Once connected it sets up the streams (refusing
ones made with other settings, naming the setting), resumes the in-progress acks of the
deliveries it was running (see worker.py), then pulls work (worker.py), follows the events
of the tasks it sent (origin.py) and heartbeats into the node registry.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import TYPE_CHECKING, Any

import anyio

from fleetbus.bus import Context, Refused
from fleetbus.bus.context import new_id
from fleetbus.bus.hub import Hub
from fleetbus.bus.version import version
from fleetbus.plugins.runner.config import AGENTS
from fleetbus.plugins.runner.models import DispatchInput

from .config import FLEET, token_of
from .models import (
    AuditRecord,
    FleetDispatchResult,
    FleetRecords,
    FleetStatus,
    FleetTask,
    FleetTaskInfo,
    FleetTasks,
    NodeInfo,
    RecordsQuery,
    TasksQuery,
)

if TYPE_CHECKING:
    from .origin import Origin
    from .transport import Transport
    from .worker import Worker

log = logging.getLogger("fleetbus.fleet")

IDLE = "fleet mode is off: no fleet.url is configured (this hub runs alone)"
NO_NATS = "fleet.url is set but nats-py is not installed: pip install 'fleetbus[fleet]'"
MIN_RETRY, MAX_RETRY = 1.0, 30.0


class Fleet:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.spec = hub.config[FLEET]
        self.node = self.spec.node_name
        agents = hub.config[AGENTS] if AGENTS in hub.config else {}  # noqa: SIM401 (runner off)
        configured_agents: list[str] = list(agents)
        wanted = self.spec.agents if self.spec.agents is not None else configured_agents
        self.agents = [token_of(a) for a in wanted if a in configured_agents]
        self.transport: Transport | None = None
        self.worker: Worker | None = None
        self.origin: Origin | None = None
        self.connected = anyio.Event()
        self.note = IDLE if not self.configured else "connecting to NATS"

    @property
    def configured(self) -> bool:
        return bool(self.spec.url)

    @property
    def online(self) -> bool:
        t = self.transport
        return self.connected.is_set() and t is not None and t.connected

    # -- lifecycle ---------------------------------------------------------------------------
    async def startup(self) -> None:
        if not self.configured:
            log.info(IDLE)
            return
        try:
            from .transport import Transport
        except ImportError:
            self.note = NO_NATS
            log.warning(NO_NATS)
            return
        from .origin import Origin
        from .worker import Worker

        self.transport = Transport(self.spec.url, self.spec.prefix, self.node)
        self.worker = Worker(self)
        self.origin = Origin(self)
        self.hub.task_group.start_soon(self.connect_loop, name="fleet connect")

    async def shutdown(self) -> None:
        if self.transport is not None:
            with anyio.CancelScope(shield=True), anyio.move_on_after(5):
                await self.transport.close()

    def is_busy(self) -> bool:
        return self.configured  # a fleet hub is a worker: it stays for the queue's work

    async def connect_loop(self) -> None:
        from .transport import FleetError

        assert self.transport is not None and self.worker is not None and self.origin
        wait = MIN_RETRY
        said = ""
        while True:
            try:
                if self.transport.nc is None:
                    await self.transport.connect(self.hub.env.get(self.spec.credentials_env))
                caps = {a: self.spec.cap(a) for a in self.agents}
                await self.transport.setup(
                    self.agents, caps, self.spec.ack_wait, self.spec.max_deliver
                )
                break
            except FleetError as e:
                self.note = f"local mode: {e}; trying again in the background"
                if str(e) != said:
                    log.warning("fleet: %s", self.note)
                    said = str(e)
                if self.transport.nc is not None and "made by another" in str(e):
                    wait = MAX_RETRY
            await anyio.sleep(wait)
            wait = min(MAX_RETRY, wait * 2)
        self.note = (
            f"in the fleet as {self.node}, taking work for {', '.join(self.agents) or 'no agent'}"
        )
        log.info("fleet: %s", self.note)
        self.connected.set()
        tg = self.hub.task_group
        await self.worker.resume()
        self.worker.start(tg)
        self.origin.start(tg)
        tg.start_soon(self.heartbeat_loop, name="fleet heartbeat")

    # -- dispatch ----------------------------------------------------------------------------
    async def dispatch(self, req: DispatchInput, ctx: Context) -> FleetDispatchResult:
        if not self.configured:
            raise Refused(f"{IDLE}; use runner.dispatch to run on this hub")
        t = self.transport
        if t is None or not self.online:
            raise Refused(f"the fleet is not reachable now ({self.note}); use runner.dispatch "
                          "to run on this hub, or try again")  # fmt: skip
        agent = token_of(req.agent)
        if req.idempotency_key:
            digest = hashlib.sha256(req.idempotency_key.encode()).hexdigest()[:24]
            task_id = f"k{digest}"
            known = await self.task_row(task_id)
            if known is not None:
                return FleetDispatchResult(
                    task_id=task_id, status=known["status"], reason="already dispatched"
                )
        else:
            task_id = new_id()
        task = FleetTask(
            **req.model_dump(),
            task_id=task_id,
            origin_node=self.node,
            origin=dict(ctx.origin),
            created_at=self.hub.wall_clock(),
        )
        row = {
            "task_id": task_id,
            "agent": req.agent,
            "workspace": req.workspace,
            "priority": req.priority,
            "status": "queued",
            "created_at": task.created_at,
        }

        def insert(tx: Any) -> None:
            tx.execute(
                "INSERT OR IGNORE INTO fleet_tasks (task_id, agent, workspace, priority, status,"
                " created_at) VALUES (:task_id, :agent, :workspace, :priority, :status,"
                " :created_at)",
                row,
            )

        await self.hub.store.write(insert)
        await t.publish_task(agent, req.priority, task_id, task.model_dump_json().encode())
        assert self.worker is not None
        await self.worker.nudge(agent)
        reason = "on the fleet's queue"
        if agent not in self.agents:
            reason += f"; this hub does not run {req.agent}: another hub must take it"
        return FleetDispatchResult(task_id=task_id, status="queued", reason=reason)

    async def task_row(self, task_id: str) -> dict[str, Any] | None:
        def read(db: Any) -> dict[str, Any] | None:
            rows = list(db.query("SELECT * FROM fleet_tasks WHERE task_id = ?", [task_id]))
            return rows[0] if rows else None

        return await self.hub.store.read(read)

    async def tasks(self, q: TasksQuery) -> FleetTasks:
        def read(db: Any) -> list[dict[str, Any]]:
            where, params = ("WHERE status = ?", [q.status]) if q.status else ("", [])
            sql = f"SELECT * FROM fleet_tasks {where} ORDER BY created_at DESC LIMIT ?"
            return list(db.query(sql, [*params, q.limit]))

        rows = await self.hub.store.read(read)
        return FleetTasks(tasks=[FleetTaskInfo(**r) for r in rows])

    async def records(self, q: RecordsQuery) -> FleetRecords:
        def read(db: Any) -> list[dict[str, Any]]:
            sql = "SELECT what, task_id, detail, at FROM fleet_audit ORDER BY seq DESC LIMIT ?"
            return list(db.query(sql, [q.limit]))

        rows = await self.hub.store.read(read)
        return FleetRecords(records=[AuditRecord(**r) for r in rows])

    # -- the registry ------------------------------------------------------------------------
    def heartbeat(self) -> dict[str, Any]:
        from fleetbus.plugins.runner import runner_of

        state = runner_of(self.hub).state
        lanes = {k: f"{n}/{limit if limit is not None else '-'}" for k, (n, limit)
                 in state.lanes.info().items()}  # fmt: skip
        return {
            "node": self.node,
            "version": version(),
            "agents": self.agents,
            "lanes": lanes,
            "running": state.lanes.running_total,
            "queued": state.queued_total,
            "fleet_running": self.worker.running if self.worker else 0,
            "last_seen": time.time(),
        }

    async def heartbeat_loop(self) -> None:
        assert self.transport is not None
        while True:
            try:
                await self.transport.heartbeat(self.heartbeat())
                if self.origin is not None:
                    await self.origin.follow_tick()
            except Exception as e:
                log.debug("fleet heartbeat failed: %s", e)
            await anyio.sleep(self.spec.heartbeat_s)

    async def status(self) -> FleetStatus:
        nodes: list[NodeInfo] = []
        depth: dict[str, dict[str, int]] = {}
        t = self.transport
        if t is not None and self.online:
            now = time.time()
            with anyio.move_on_after(5):
                for raw in await t.nodes():
                    raw["lost"] = now - float(raw.get("last_seen", 0)) > 3 * self.spec.heartbeat_s
                    try:
                        nodes.append(NodeInfo(**raw))
                    except ValueError:
                        continue
                for agent in self.agents:
                    depth[agent] = await t.depth(agent)
        note = self.note
        if t is not None and self.connected.is_set() and not t.connected:
            note = f"local mode: {t.last_error or 'disconnected'}; reconnecting"
        return FleetStatus(
            configured=self.configured,
            connected=self.online,
            node=self.node,
            note=note,
            nodes=sorted(nodes, key=lambda n: n.node),
            lost=sorted(n.node for n in nodes if n.lost),
            depth=depth,
            running_here=self.worker.running if self.worker else 0,
            following=self.origin is not None and self.origin.mirror_sub is not None,
            mirroring=self.origin is not None and self.origin.mirroring,
        )

    async def audit(self, what: str, task_id: str | None, detail: Any) -> None:
        text = detail if isinstance(detail, str) else json.dumps(detail)

        def insert(tx: Any) -> None:
            tx.execute(
                "INSERT INTO fleet_audit (what, task_id, detail, at) VALUES (?, ?, ?, ?)",
                [what, task_id, text[:4000], self.hub.wall_clock()],
            )

        await self.hub.store.write(insert)
