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

from fleetbus.bus import Context, InvalidInput, Refused
from fleetbus.bus.context import new_id
from fleetbus.bus.hub import Hub
from fleetbus.bus.version import version
from fleetbus.plugins.agentic.config import AGENTIC
from fleetbus.plugins.agentic.models import DispatchTask
from fleetbus.plugins.agentic.router import NoAgent, Registry, route
from fleetbus.plugins.runner.config import AGENTS
from fleetbus.plugins.runner.models import DispatchInput

from .config import FLEET, token_of
from .models import (
    AnyTask,
    AuditRecord,
    FleetAgenticTask,
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

ANY_TASKS = "tasks-any"  # the lane of agentic tasks on a repository URL: any hub takes them
TASK_SLOT = "_tasks"  # agentic tasks' fleet-wide slots (cap: fleet.caps["tasks"])
IDLE = "fleet mode is off: no fleet.url is configured (this hub runs alone)"
NO_NATS = "fleet.url is set but nats-py is not installed: pip install 'fleetbus[fleet]'"
MIN_RETRY, MAX_RETRY = 1.0, 30.0
CONNECTING = "connecting to NATS"
CONNECT_WAIT = 5.0  # a dispatch to a hub still making its first connection waits this long


def model_lane(agent: str, model: str) -> str:
    return f"{token_of(agent)}--{token_of(model)}"


class Fleet:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.spec = hub.config[FLEET]
        self.node = self.spec.node_name
        agents = hub.config[AGENTS] if AGENTS in hub.config else {}  # noqa: SIM401 (runner off)
        configured_agents: list[str] = list(agents)
        wanted = self.spec.agents if self.spec.agents is not None else configured_agents
        self.agents = [token_of(a) for a in wanted if a in configured_agents]
        self.agent_names = {token_of(a): a for a in wanted if a in configured_agents}
        # lane -> slot: an agent's runs (its own slots), with a lane of their own for the
        # runs of a model that has its own lane limit (`<agent>--<model>`, the same slots),
        # and agentic tasks (shared slots): those any hub may take (a repository URL) and
        # those only this one may (a repository path on this machine)
        self.lanes: dict[str, str] = {a: a for a in self.agents}
        self.model_lanes: dict[str, tuple[str, str]] = {}  # lane -> (agent, model)
        for name, spec in agents.items():
            for model in spec.limits()[1]:
                lane = model_lane(name, model)
                self.model_lanes[lane] = (name, model)
                if token_of(name) in self.agents:
                    self.lanes[lane] = token_of(name)
        self.has_agentic = AGENTIC in hub.config
        if self.agents and self.has_agentic:
            self.lanes[ANY_TASKS] = self.lanes[self.local_tasks] = TASK_SLOT
        self.registry = Registry(ttl=3 * self.spec.heartbeat_s)
        self.transport: Transport | None = None
        self.worker: Worker | None = None
        self.origin: Origin | None = None
        self.connected = anyio.Event()
        self.note = IDLE if not self.configured else CONNECTING

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
                caps = {slot: self.spec.cap("tasks" if slot == TASK_SLOT else slot)
                        for slot in set(self.lanes.values())}  # fmt: skip
                await self.transport.setup(
                    self.lanes, caps, self.spec.ack_wait, self.spec.max_deliver
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
        with anyio.move_on_after(5):  # in the registry before the first dispatch anywhere
            await self.transport.heartbeat(self.heartbeat())
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

    @property
    def local_tasks(self) -> str:
        """The lane of agentic tasks on a repository of this machine."""
        return f"tasks-at-{self.node}"

    def lanes_of(self, agent: str) -> list[str]:
        """The lanes a run of `agent` ending here frees room in."""
        slot = token_of(agent)
        return [lane for lane, s in self.lanes.items() if s in (slot, TASK_SLOT)]

    def lane_for(self, agent: str, model: str | None) -> str:
        """The lane of a run: its model's, if that model has a lane limit, else its agent's."""
        lane = model_lane(agent, model) if model else ""
        return lane if lane in self.model_lanes else token_of(agent)

    def lane_of(self, task: AnyTask) -> str:
        if isinstance(task, FleetTask):
            return self.lane_for(task.agent, task.model)
        return task.lane

    # -- dispatch ----------------------------------------------------------------------------
    async def _check_online(self) -> Transport:
        if not self.configured:
            raise Refused(f"{IDLE}; use runner.dispatch to run on this hub")
        if self.transport is not None and self.note == CONNECTING:
            with anyio.move_on_after(CONNECT_WAIT):  # a hub just started: let it connect
                await self.connected.wait()
        t = self.transport
        if t is None or not self.online:
            raise Refused(f"the fleet is not reachable now ({self.note}); use runner.dispatch "
                          "to run on this hub, or try again")  # fmt: skip
        return t

    async def _task_id(self, key: str | None) -> tuple[str, FleetDispatchResult | None]:
        """A new task id, or the id an idempotency key gives and, if it was dispatched
        already, its answer."""
        if not key:
            return new_id(), None
        task_id = f"k{hashlib.sha256(key.encode()).hexdigest()[:24]}"
        known = await self.task_row(task_id)
        if known is None:
            return task_id, None
        return task_id, FleetDispatchResult(
            task_id=task_id, status=known["status"], reason="already dispatched"
        )

    async def dispatch(self, req: DispatchInput, ctx: Context) -> FleetDispatchResult:
        t = await self._check_online()
        task_id, known = await self._task_id(req.idempotency_key)
        if known is not None:
            return known
        task = FleetTask(
            **req.model_dump(),
            task_id=task_id,
            origin_node=self.node,
            origin=dict(ctx.origin),
            created_at=self.hub.wall_clock(),
        )
        lane = self.lane_for(req.agent, req.model)
        await self.send(t, task, lane, req.agent, req.workspace, req.priority)
        reason = "on the fleet's queue"
        if lane not in self.lanes:
            reason += f"; this hub does not run {req.agent}: another hub must take it"
        return FleetDispatchResult(task_id=task_id, status="queued", reason=reason)

    async def dispatch_task(self, req: DispatchTask, ctx: Context) -> FleetDispatchResult:
        """An agentic task on the fleet's queue: a repository URL goes to any hub; a local
        path only to this one (the only machine that has it)."""
        from fleetbus.plugins.agentic.git import GitError, source_of

        t = await self._check_online()
        try:
            source = await anyio.to_thread.run_sync(source_of, req.repo)
        except GitError as e:
            raise InvalidInput(f"fleet.dispatch_task: repo: {e}") from None
        with anyio.move_on_after(2):  # the nodes' latest heartbeats: agents come and go
            await self.refresh_registry()
        self.check_labels(req.labels, req.agent)
        task_id, known = await self._task_id(req.idempotency_key)
        if known is not None:
            return known
        if source.kind == "local":
            lane = self.local_tasks
            request = req.model_copy(update={"repo": source.location})
            reason = (f"on the fleet's queue for {self.node}: {source.location} is a path on "
                      "this machine, so only this hub can run it")  # fmt: skip
            if lane not in self.lanes:
                reason += "; this hub runs no agents (fleet.agents), so it waits until it does"
        else:
            lane, request, reason = ANY_TASKS, req, "on the fleet's queue: any hub may take it"
        task = FleetAgenticTask(
            kind="task",
            request=request,
            lane=lane,
            task_id=task_id,
            origin_node=self.node,
            origin=dict(ctx.origin),
            created_at=self.hub.wall_clock(),
        )
        await self.send(t, task, lane, req.agent or "", request.repo, req.priority)
        return FleetDispatchResult(task_id=task_id, status="queued", reason=reason)

    def check_labels(self, labels: list[str], agent: str | None) -> None:
        """Refuse a task no agent of the fleet (the nodes' heartbeats) could take."""
        now = time.time()
        candidates = self.registry.list(now)
        if not candidates:
            return  # no hub with agents in the fleet now: the task waits for one
        if agent:
            candidates = [c for c in candidates if c.name.split("@", 1)[0] == agent]
            if not candidates:
                raise Refused(f"no hub of the fleet runs the agent {agent!r}")
        try:
            route(labels, candidates, critical=False)
        except NoAgent as e:
            if e.never:
                raise Refused(f"no hub of the fleet can take it: {e}") from None

    async def send(
        self, t: Transport, task: AnyTask, lane: str, agent: str, workspace: str, priority: str
    ) -> None:
        row = {
            "task_id": task.task_id,
            "agent": agent,
            "workspace": workspace,
            "priority": priority,
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
        await t.publish_task(lane, priority, task.task_id, task.model_dump_json().encode())
        assert self.worker is not None
        await self.worker.nudge(lane, priority)

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
        capabilities: dict[str, list[str]] = {}
        if self.has_agentic:
            from fleetbus.plugins.agentic import agentic_of

            capabilities = {c.name: sorted(c.capabilities) for c in
                            agentic_of(self.hub).candidates() if c.name in self.agents}  # fmt: skip
        return {
            "node": self.node,
            "version": version(),
            "agents": self.agents,
            "capabilities": capabilities,
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

    async def refresh_registry(self) -> None:
        """The agents of every live node, as the agentic router's remote registry (agent
        `name@node`, its capabilities, its load): registered on first sight, heartbeated
        after, forgotten (reaped) once silent for three heartbeats. Read when a task is
        routed (`dispatch_task`), the only reader: not at every heartbeat of every hub."""
        assert self.transport is not None
        now = time.time()
        for node in await self.transport.nodes():
            if now - float(node.get("last_seen", 0)) > self.registry.ttl:
                continue
            lanes = node.get("lanes") or {}
            for agent, caps in (node.get("capabilities") or {}).items():
                name = f"{agent}@{node['node']}"
                running, _, limit = str(lanes.get(agent, "0/1")).partition("/")
                load = int(running) if running.isdigit() else 0
                max_load = int(limit) if limit.isdigit() else 1
                if not self.registry.heartbeat(name, load, now):
                    self.registry.register(name, caps, max_load, now)
                    self.registry.heartbeat(name, load, now)
        self.registry.reap(now)

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
                for lane in self.lanes:
                    depth[lane] = await t.depth(lane)
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
