"""The asking side of fleet mode: what happened to the tasks this hub put on the queue,
whichever hub ran them, told to the session that asked.

Events for this node arrive on its durable consumer of the events stream (a hub that was
away catches up). A start becomes `fleet.task_started` and a `running` channel event; an
end becomes `fleet.task_ended` and the channel event of the run's end, once per task: a
second end (a superseded delivery, a repeated event) changes nothing. Each is published
in a context carrying the dispatch's origin, so the MCP front end routes it to the
session that called `fleet_dispatch`, as it does for local runs.

The mirror costs every hub a message per run message of every other hub, so it runs only
while someone follows: a hub with a local subscriber of `fleet.remote` (`fleetbus tail`)
says so on `P.follow` at every heartbeat and listens to `P.bus.*`; hubs that heard a
follower within three heartbeats send. A new follower sees the fleet's messages from the
next heartbeat on (two seconds by default).

Also here: dead letters (a task that reached `max_deliver` because the hubs holding it
were lost; every hub hears the advisory, the first to write `dead.<task>` reports it) and
the mirror of other hubs' run and task messages as `fleet.remote`, for `fleetbus tail`.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc

from fleetbus.bus import ChannelPush, Context, Message

from .models import TERMINAL, FleetRemote, FleetTask, FleetTaskEnded, FleetTaskStarted
from .transport import Transport

if TYPE_CHECKING:
    from .service import Fleet

log = logging.getLogger("fleetbus.fleet")

STATUS_CHANNEL = "agent.status"
MIRRORED = ("runner.", "agentic.", "fleet.task_")


class Origin:
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.hub = fleet.hub
        self.mirror_until = 0.0  # send run messages to the other hubs until then
        self.mirror_sub: Any = None  # our subscription to theirs, while someone follows

    @property
    def t(self) -> Transport:
        assert self.fleet.transport is not None
        return self.fleet.transport

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        tg.start_soon(self.events_loop, name="fleet events")
        tg.start_soon(self._subscribe, name="fleet advisories")

    async def _subscribe(self) -> None:
        await self.t.on_dead_letter(self.dead_letter)
        await self.t.on_follow(self.followed)

    @property
    def mirroring(self) -> bool:
        return time.monotonic() <= self.mirror_until

    def followed(self) -> None:
        self.mirror_until = time.monotonic() + 3 * self.fleet.spec.heartbeat_s

    async def follow_tick(self) -> None:
        """At each heartbeat: follow the other hubs while someone here reads their messages."""
        following = self.hub.bus.wants(FleetRemote.topic)
        if following:
            await self.t.follow()
            if self.mirror_sub is None:
                self.mirror_sub = await self.t.on_mirror(self.remote)
        elif self.mirror_sub is not None:
            sub, self.mirror_sub = self.mirror_sub, None
            await sub.unsubscribe()

    # -- events of our tasks -----------------------------------------------------------------
    async def events_loop(self) -> None:
        while True:
            try:
                msgs = await self.t.next_events(64, 5.0)
            except Exception as e:
                log.debug("fleet events: %s", e)
                await anyio.sleep(1.0)
                continue
            events = []
            for msg in msgs:
                try:
                    event = json.loads(msg.data)
                    str(event["task_id"])
                    events.append(event)
                except (ValueError, KeyError, TypeError) as e:
                    log.warning("fleet: an event that is not one was dropped: %s", e)
            try:
                await self.handle(events)
            except Exception as e:  # the store: the events come again (not acked)
                log.warning("fleet: events could not be recorded: %s", e)
                continue
            for msg in msgs:
                await self.t.reply(msg.reply, b"+ACK")

    async def handle(self, events: list[dict[str, Any]]) -> None:
        """Record a batch of events in one write, then announce the ones that are news: a
        start of a task not ended, the first end of a task."""
        now = self.hub.wall_clock()

        def record(tx: Any) -> list[dict[str, Any]]:
            news = []
            for event in events:
                task_id = str(event["task_id"])
                fields = (event.get("node"), event.get("run_id"), event.get("delivery"))
                row = tx.execute(
                    "SELECT status FROM fleet_tasks WHERE task_id = ?", [task_id]
                ).fetchone()
                if row is not None and row[0] in TERMINAL:
                    continue  # told once already
                if event.get("kind") == "started":
                    tx.execute(
                        "UPDATE fleet_tasks SET status = 'running', node = ?, run_id = ?, "
                        "delivery = ? WHERE task_id = ?",
                        [*fields, task_id],
                    )
                else:
                    tx.execute(
                        "UPDATE fleet_tasks SET status = ?, node = ?, run_id = ?, delivery = ?, "
                        "exit_code = ?, reason = ?, ended_at = ? WHERE task_id = ?",
                        [str(event.get("status", "")), *fields, event.get("exit_code"),
                         str(event.get("reason", "")), now, task_id],
                    )  # fmt: skip
                news.append(event)
            return news

        # starts need not survive the machine (their end will come); an end must, as it
        # keeps a repeated end from being told twice
        durable = any(e.get("kind") != "started" for e in events)
        for event in await self.hub.store.write(record, durable=durable):
            self.announce(event)

    def announce(self, event: dict[str, Any]) -> None:
        origin = {str(k): str(v) for k, v in (event.get("origin") or {}).items()}
        ctx = Context(caller="fleet", origin=origin)
        base = {
            "task_id": str(event["task_id"]),
            "agent": str(event.get("agent", "")),
            "workspace": str(event.get("workspace", "")),
            "node": str(event.get("node", "")),
            "run_id": event.get("run_id"),
            "delivery": event.get("delivery"),
        }
        status = str(event.get("status", ""))
        where = f"{base['agent']} on {base['node']}"
        if event.get("kind") == "started":
            message: FleetTaskStarted | FleetTaskEnded = FleetTaskStarted(**base)
            content = f"{where} started {base['workspace']} (task {base['task_id']})"
        else:
            code = event.get("exit_code")
            message = FleetTaskEnded(**base, status=status, exit_code=code,
                                     reason=str(event.get("reason", "")))  # fmt: skip
            exit_text = f", exit {code}" if code is not None else ""
            why = f" ({event['reason']})" if event.get("reason") else ""
            content = f"{where} finished {base['workspace']}: {status}{exit_text}{why}"
        meta = {"channel": STATUS_CHANNEL, "status": status or "running", "fleet": "1"}
        meta.update({k: str(v) for k, v in base.items() if v is not None})
        # the id the assistant holds is the task's (the run's id is the executing hub's);
        # coalesced events list their tasks under run_ids/statuses by it
        meta["node_run_id"] = meta.pop("run_id", "")
        meta["run_id"] = str(base["task_id"])
        bus = self.hub.bus
        bus.publish(message, ctx)
        bus.publish(ChannelPush(channel=STATUS_CHANNEL, content=content, meta=meta), ctx)

    # -- dead letters ------------------------------------------------------------------------
    async def dead_letter(self, seq: int) -> None:
        body = await self.t.stored(seq)
        if body is None:
            return
        try:
            task = FleetTask.model_validate_json(body)
        except ValueError:
            await self.t.remove(seq)
            return
        spec = self.fleet.spec
        if not await self.t.create(f"dead.{task.task_id}", {"node": self.fleet.node}):
            return  # another hub reports it
        reason = (
            f"dead-lettered after {spec.max_deliver} deliveries (the hubs holding it were lost)"
        )
        event = {
            "kind": "ended", "task_id": task.task_id, "agent": task.agent,
            "workspace": task.workspace, "node": self.fleet.node, "run_id": None,
            "delivery": spec.max_deliver, "status": "dead_lettered", "exit_code": None,
            "reason": reason, "origin": task.origin,
        }  # fmt: skip
        await self.t.create(f"outcome.{task.task_id}", {"status": "dead_lettered"})
        await self.t.publish_event(task.origin_node, event, f"{task.task_id}:dead")
        await self.t.remove(seq)
        await self.fleet.audit("dead_lettered", task.task_id, reason)
        log.warning("fleet: task %s %s", task.task_id, reason)

    # -- the mirror --------------------------------------------------------------------------
    async def mirror(self, message: Message) -> None:
        """Send a local run or task message to the other hubs (subscriber)."""
        topic = message.topic
        if not self.mirroring or not topic.startswith(MIRRORED):
            return
        body = {"topic": topic, "data": message.model_dump(mode="json")}
        try:
            await self.t.mirror(json.dumps(body).encode())
        except Exception as e:
            log.debug("fleet mirror: %s", e)

    async def remote(self, node: str, data: bytes) -> None:
        try:
            body = json.loads(data)
            message = FleetRemote(node=node, remote_topic=str(body["topic"]), data=body["data"])
        except (ValueError, KeyError, TypeError):
            return
        self.hub.bus.publish(message, Context(caller=f"fleet:{node}"))
