"""The executing side of fleet mode: take tasks from the fleet's queue as fast as this
hub's lanes free up, run them on the local runner, keep their deliveries alive, and settle
them with fencing.

Per agent, one pull loop: when the runner answers that a run of the agent could start here
(`FreeSlots`), take the oldest task of the highest waiting priority, then a fleet-wide slot
token for its agent (waiting while the fleet is at its cap), and hand the task to
`runner.dispatch` with the idempotency key `fleet:<task>`, so a task delivered again to
the same hub finds its run instead of starting a second one. The delivery's reply
subjects are stored with the run, and every third of `ack_wait` an in-progress ack goes
to the task and the slot; a restarted hub resumes those acks from the store.

Fencing: taking delivery n > 1 of a task raises its claim (`claim.<task>` in the tasks
bucket) to n (a first delivery has nothing to fence off). When the run ends, a delivery that finds a higher claim was superseded (its hub was
lost for longer than `ack_wait` and the task went elsewhere): its result is recorded (an
audit row and `late.<task>.<n>`) but it writes no outcome, sends no event and acks
nothing (its slot token has moved on too). Otherwise the outcome is written once
(`outcome.<task>`), the end goes to the origin hub's events, and the task is acked and
the slot given back.

A message on the dispatch subjects that is not a valid task is terminated (`+TERM`, never
retried) with an audit row.
"""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from pydantic import ValidationError

from fleetbus.bus import Context, Message
from fleetbus.bus.errors import BusError
from fleetbus.plugins.agentic.models import TaskEnded
from fleetbus.plugins.runner.models import FreeSlots, RunCompleted, RunStarted

from .models import AnyTask, FleetTask, parse_task
from .transport import PRIORITIES, Delivery, FleetError, Transport

if TYPE_CHECKING:
    from .service import Fleet

log = logging.getLogger("fleetbus.fleet")

IDLE_POLL = 1.0  # seconds between looks at an empty queue (a dispatch nudges sooner)
NUDGE_GAP = 0.005  # seconds between two nudges of one lane and priority


class Held:
    """A delivery this hub runs: the task, its replies, and its local id (the runner's run,
    or the agentic service's task)."""

    __slots__ = (
        "agent", "delivery", "disconnects", "finishing", "lane", "run_id", "slot_reply",
        "taken_at", "task", "task_reply", "workspace",
    )  # fmt: skip

    def __init__(
        self,
        task: AnyTask,
        lane: str,
        delivery: int,
        task_reply: str,
        slot_reply: str,
        disconnects: int | None = None,
    ) -> None:
        self.task = task
        self.taken_at = time.monotonic()
        self.disconnects = disconnects  # the connection's count when taken; None: unknown
        self.lane = lane
        self.delivery = delivery
        self.task_reply = task_reply
        self.slot_reply = slot_reply
        self.run_id: str | None = None
        self.finishing = False
        self.agent = task.agent_name
        self.workspace = task.workspace if isinstance(task, FleetTask) else task.request.repo

    def surely_current(self, disconnects: int, ack_wait: float) -> bool:
        """True when no other delivery of the task can exist, so its claim need not be
        read: JetStream redelivers only after `ack_wait` without a word from us, and less
        than half of that has passed since we took it, on a connection never lost since."""
        return self.disconnects == disconnects and time.monotonic() - self.taken_at < ack_wait / 2

    @property
    def local_key(self) -> str | None:
        """The key of its run (`run:<id>`) or agentic task (`task:<id>`) in `by_run`."""
        if self.run_id is None:
            return None
        return f"{self.task.kind}:{self.run_id}"


class Worker:
    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.hub = fleet.hub
        self.spec = fleet.spec
        self.held: dict[tuple[str, int], Held] = {}
        self.by_run: dict[str, Held] = {}
        self.wake: dict[str, anyio.Event] = {lane: anyio.Event() for lane in fleet.lanes}
        # the priorities of a lane that may hold tasks: a nudge adds one, an empty pull
        # takes it out, a quiet second puts them all back (a nudge may have been missed)
        self.maybe: dict[str, set[str]] = {lane: set(PRIORITIES) for lane in fleet.lanes}
        self.starting: Counter[str] = Counter()  # taken, not yet answered by the runner
        self.nudged: dict[tuple[str, str], float] = {}  # (lane, priority) -> last nudge sent
        self.trailing: set[tuple[str, str]] = set()  # nudges to send after NUDGE_GAP
        self.ended_send, self.ended_recv = anyio.create_memory_object_stream[
            tuple[str, str, int | None, str]
        ](math.inf)

    @property
    def t(self) -> Transport:
        assert self.fleet.transport is not None
        return self.fleet.transport

    @property
    def running(self) -> int:
        return len(self.held)

    def start(self, tg: anyio.abc.TaskGroup) -> None:
        for lane in self.fleet.lanes:
            tg.start_soon(self.pull_loop, lane, name=f"fleet pull {lane}")
        tg.start_soon(self.keep_alive, name="fleet in-progress acks")
        tg.start_soon(self.settle_loop, name="fleet settle")
        tg.start_soon(self._listen_nudges, name="fleet nudges")

    async def _listen_nudges(self) -> None:
        await self.t.on_nudge(self.nudged_by)

    def nudged_by(self, lane: str, priority: str) -> None:
        """Another hub (or this one) put work of `priority` in `lane`."""
        if lane in self.maybe:
            self.maybe[lane].update([priority] if priority in PRIORITIES else PRIORITIES)
            self.poke(lane)

    async def nudge(self, lane: str, priority: str) -> None:
        """Tell every hub that `lane` has new work of `priority` (they look at once). A
        burst of dispatches sends one nudge at once and one more NUDGE_GAP later, not one
        each (every hub wakes for every nudge)."""
        key = (lane, priority)
        if time.monotonic() - self.nudged.get(key, 0.0) >= NUDGE_GAP:
            await self._nudge(key)
        elif key not in self.trailing:
            self.trailing.add(key)
            self.hub.task_group.start_soon(self._trailing_nudge, key)

    async def _trailing_nudge(self, key: tuple[str, str]) -> None:
        await anyio.sleep(NUDGE_GAP)
        self.trailing.discard(key)
        await self._nudge(key)

    async def _nudge(self, key: tuple[str, str]) -> None:
        self.nudged[key] = time.monotonic()
        lane, priority = key
        try:
            await self.t.nudge(lane, priority)
        except Exception as e:
            log.debug("fleet nudge failed: %s", e)

    def poke(self, agent: str) -> None:
        event = self.wake.get(agent)
        if event is not None:
            event.set()

    # -- messages from the local bus ---------------------------------------------------------
    def on_message(self, message: Message) -> None:
        """A local run started or ended, or an agentic task ended (subscriber): settle
        ours, look for more work."""
        if isinstance(message, RunCompleted):
            key = f"run:{message.run_id}"
            if key in self.by_run:
                end = (key, message.status, message.exit_code, message.reason)
                self.ended_send.send_nowait(end)
            for lane in self.fleet.lanes_of(message.agent):
                self.poke(lane)
        elif isinstance(message, TaskEnded):
            key = f"task:{message.task_id}"
            if key in self.by_run:
                self.ended_send.send_nowait((key, message.status, None, message.reason))
        elif isinstance(message, RunStarted) and f"run:{message.run_id}" in self.by_run:
            held = self.by_run[f"run:{message.run_id}"]
            self.hub.task_group.start_soon(self.tell_started, held)

    # -- taking work -------------------------------------------------------------------------
    async def pull_loop(self, agent: str) -> None:
        while True:
            try:
                await self.pull_once(agent)
            except (FleetError, OSError, TimeoutError) as e:
                log.debug("fleet pull %s: %s", agent, e)
                await self._idle(agent)
            except Exception as e:
                if type(e).__module__.startswith("nats"):
                    log.debug("fleet pull %s: %s", agent, e)
                    await self._idle(agent)
                else:
                    raise

    async def _idle(self, lane: str) -> None:
        with anyio.move_on_after(IDLE_POLL) as quiet:
            await self.wake[lane].wait()
        if quiet.cancelled_caught:
            self.maybe[lane] = set(PRIORITIES)
        self.wake[lane] = anyio.Event()

    async def free(self, lane: str) -> int:
        """Tasks of `lane` this hub could start now: the runner's free slots for the
        agent (an agentic lane: for the freest agent), less those being started."""
        if lane in self.fleet.model_lanes:
            agent, model = self.fleet.model_lanes[lane]
            asks = [FreeSlots(agent=agent, model=model)]
        elif lane in self.fleet.agents:
            asks = [FreeSlots(agent=self.fleet.agent_names[lane])]
        else:
            asks = [FreeSlots(agent=self.fleet.agent_names[a]) for a in self.fleet.agents]
        free = 0
        for ask in asks:
            free = max(free, await self.hub.bus.query(ask))
        return int(free) - self.starting[lane]

    async def pull_once(self, lane: str) -> None:
        """Take as many tasks as the runner has room for now (they start concurrently)."""
        free = await self.free(lane)
        if free <= 0:
            await self._idle(lane)
            return
        taken, empty = await self.t.take_tasks(lane, free, self.maybe[lane])
        self.maybe[lane].difference_update(empty)
        if not taken:
            await self._idle(lane)
            return
        tasks = [(msg, task) for msg in taken if (task := await self.check(msg)) is not None]
        slots: list[Delivery] = []
        slot_name = self.fleet.lanes[lane]
        while len(slots) < len(tasks):  # the fleet at its cap: wait, keeping the tasks ours
            if slots or self.t.connected:
                more = await self.t.take_slots(
                    slot_name, len(tasks) - len(slots), min(5.0, self.spec.ack_wait / 3)
                )
                slots += more
                if more:
                    continue
            for msg, _ in tasks[len(slots) :]:
                await self.t.reply(msg.reply, b"+WPI")
        for (msg, task), slot in zip(tasks, slots, strict=True):
            self.starting[lane] += 1
            self.hub.task_group.start_soon(self.start_one, lane, task, msg, slot)

    async def start_one(self, lane: str, task: AnyTask, msg: Delivery, slot: Delivery) -> None:
        try:
            await self.run(task, lane, msg, slot)
        except Exception as e:  # NATS away, say: the delivery goes back after ack_wait
            log.warning("fleet: starting task %s failed: %s", task.task_id, e)
            held = self.held.get((task.task_id, msg.delivered))
            if held is not None and held.run_id is None:
                del self.held[(task.task_id, msg.delivered)]
        finally:
            self.starting[lane] -= 1
            self.poke(lane)

    async def check(self, msg: Delivery) -> AnyTask | None:
        """The task in `msg`, or None after terminating a message that is not one."""
        try:
            return parse_task(msg.data)
        except (ValidationError, ValueError) as e:
            await self.t.reply(msg.reply, b"+TERM")
            detail = {"subject": msg.subject, "seq": msg.stream_seq, "error": str(e)[:500]}
            await self.fleet.audit("refused", None, detail)
            log.warning("fleet: terminated a message on %s that is not a valid dispatch",
                        msg.subject)  # fmt: skip
            return None

    async def run(self, task: AnyTask, lane: str, msg: Delivery, slot: Delivery) -> None:
        n = msg.delivered
        # a first delivery claims nothing: the fence is only raised by a redelivery
        if n > 1 and not await self.claim(task.task_id, n):
            await self.t.reply(slot.reply, b"-NAK")  # a newer delivery owns the task
            return
        done = None
        if n > 1:  # delivered again: it may have ended, only its ack lost
            done, _ = await self.t.get(f"outcome.{task.task_id}")
        if done is not None:
            await self.t.reply(msg.reply, b"+ACK")
            await self.t.reply(slot.reply, b"-NAK")
            return
        held = Held(task, lane, n, msg.reply, slot.reply, self.t.disconnects)
        self.held[(task.task_id, n)] = held
        await self.store_held(held)
        await self.start_run(held)

    async def start_run(self, held: Held) -> None:
        """Hand the task to the runner (or, an agentic task, to `agentic.dispatch`) under
        the key `fleet:<task>`: a second call (after a restart) finds the run or task the
        first one made instead of starting another."""
        task = held.task
        ctx = Context(
            caller="fleet",
            origin={"mcp_session": f"fleet:{task.task_id}", "fleet_task": task.task_id},
        )
        if isinstance(task, FleetTask):
            action = "runner.dispatch"
            payload = task.model_dump(
                exclude={"kind", "task_id", "origin_node", "origin", "created_at"}
            )
        else:
            action = "agentic.dispatch"
            payload = task.request.model_dump()
        payload["idempotency_key"] = f"fleet:{task.task_id}"
        try:
            result = await self.hub.bus.perform(action, payload, context=ctx)
        except BusError as e:
            await self.finish(held, "failed", None, f"refused on {self.fleet.node}: {e}")
            return
        if isinstance(task, FleetTask):
            held.run_id = result.run_id
        else:
            held.run_id = result.task_id
            held.agent, held.workspace = result.agent, result.workspace
        assert held.local_key is not None
        self.by_run[held.local_key] = held

        if result.status == "running" or (
            not isinstance(task, FleetTask) and result.status == "pending"
        ):
            await self.tell_started(held)
        elif result.status not in ("queued", "pending"):  # it ended before this hub stopped
            code = None
            if isinstance(task, FleetTask):
                runs = (await self.hub.bus.perform("runner.status", {"run_id": result.run_id})).runs
                code = runs[0].exit_code if runs else None
            await self.finish(held, str(result.status), code, result.reason)

    async def claim(self, task_id: str, delivery: int) -> bool:
        """Raise the task's claim to `delivery`; False if a newer delivery holds it."""
        key = f"claim.{task_id}"
        value = {"delivery": delivery, "node": self.fleet.node}
        if await self.t.create(key, value):  # the usual case: the first claim
            return True
        for _ in range(10):
            have, rev = await self.t.get(key)
            if have is None:
                if await self.t.create(key, value):
                    return True
            elif int(have.get("delivery", 0)) > delivery:
                return False
            elif (
                int(have["delivery"]) == delivery and have.get("node") == self.fleet.node
            ) or await self.t.update(key, value, rev):
                return True
        return False

    async def store_held(self, held: Held) -> None:
        def insert(tx: Any) -> None:
            tx.execute(
                "INSERT OR REPLACE INTO fleet_runs (task_id, delivery, task, reply, "
                "slot_reply, state, started_at) VALUES (?, ?, ?, ?, ?, 'running', ?)",
                [held.task.task_id, held.delivery, held.task.model_dump_json(),
                 held.task_reply, held.slot_reply, self.hub.wall_clock()],
            )  # fmt: skip

        # not fsynced: a hub process that dies keeps it (the OS has it); a machine that
        # dies takes the runs with it, and the delivery goes elsewhere after ack_wait
        await self.hub.store.write(insert, durable=False)

    # -- while it runs -----------------------------------------------------------------------
    async def keep_alive(self) -> None:
        while True:
            await anyio.sleep(self.spec.ack_wait / 3)
            try:
                for held in list(self.held.values()):
                    await self.t.reply(held.task_reply, b"+WPI")
                    await self.t.reply(held.slot_reply, b"+WPI")
            except Exception as e:
                log.debug("fleet in-progress acks: %s", e)

    async def tell_started(self, held: Held) -> None:
        await self.event(held, "started", "running", None, "")

    async def event(
        self,
        held: Held,
        kind: str,
        status: str,
        exit_code: int | None,
        reason: str,
        *,
        raise_errors: bool = False,
    ) -> None:
        task = held.task
        body = {
            "kind": kind,
            "task_id": task.task_id,
            "agent": held.agent,
            "workspace": held.workspace,
            "node": self.fleet.node,
            "run_id": held.run_id,
            "delivery": held.delivery,
            "status": status,
            "exit_code": exit_code,
            "reason": reason,
            "origin": task.origin,
        }
        try:
            await self.t.publish_event(
                task.origin_node,
                body,
                f"{task.task_id}:{kind}:{held.delivery}",
                confirm=raise_errors,
            )
        except Exception as e:
            if raise_errors:
                raise
            log.warning("fleet: could not tell %s about task %s: %s", task.origin_node,
                        task.task_id, e)  # fmt: skip

    # -- the end -----------------------------------------------------------------------------
    async def settle_loop(self) -> None:
        async for key, status, exit_code, reason in self.ended_recv:
            held = self.by_run.get(key)
            if held is not None:
                self.hub.task_group.start_soon(self.settle, held, status, exit_code, reason)

    async def settle(self, held: Held, status: str, exit_code: int | None, reason: str) -> None:
        try:
            await self.finish(held, status, exit_code, reason)
        except Exception as e:
            log.warning("fleet: settling task %s failed: %s", held.task.task_id, e)

    async def finish(self, held: Held, status: str, exit_code: int | None, reason: str) -> None:
        """Settle a delivery whose run ended: fence, record, tell the origin, ack. NATS
        steps are tried until they succeed (the delivery's in-progress acks go on
        meanwhile); back after `ack_wait`, the claim shows the task went elsewhere."""
        task = held.task
        if held.finishing or self.held.get((task.task_id, held.delivery)) is not held:
            return  # settled already (its end and a restart's look can both arrive)
        held.finishing = True
        if held.local_key is not None:
            self.by_run.pop(held.local_key, None)
        wait = 0.5
        while True:
            try:
                state = await self.settle_on_nats(held, status, exit_code, reason)
                break
            except Exception as e:
                log.debug("fleet: settling task %s waits for NATS: %s", task.task_id, e)
                await anyio.sleep(wait)
                wait = min(10.0, wait * 2)
        self.held.pop((task.task_id, held.delivery), None)

        def mark(tx: Any) -> None:
            tx.execute(
                "UPDATE fleet_runs SET state = ? WHERE task_id = ? AND delivery = ?",
                [state, task.task_id, held.delivery],
            )

        await self.hub.store.write(mark, durable=False)
        self.poke(held.lane)

    async def settle_on_nats(
        self, held: Held, status: str, exit_code: int | None, reason: str
    ) -> str:
        task = held.task
        n = held.delivery
        claim = None
        if not held.surely_current(self.t.disconnects, self.spec.ack_wait):
            claim, _ = await self.t.get(f"claim.{task.task_id}")
        if claim is not None and int(claim.get("delivery", 0)) > n:
            late = {"status": status, "exit_code": exit_code, "node": self.fleet.node,
                    "delivery": n, "superseded_by": claim.get("delivery")}  # fmt: skip
            await self.t.put(f"late.{task.task_id}.{n}", late)
            await self.fleet.audit("late", task.task_id, late)
            return "superseded"
        outcome = {"status": status, "exit_code": exit_code, "delivery": n,
                   "node": self.fleet.node, "run_id": held.run_id, "reason": reason}  # fmt: skip
        await self.t.create_soon(f"outcome.{task.task_id}", outcome)
        await self.event(held, "ended", status, exit_code, reason, raise_errors=True)
        await self.t.reply(held.task_reply, b"+ACK")
        await self.t.reply(held.slot_reply, b"-NAK")
        return "ended"

    # -- after a restart ---------------------------------------------------------------------
    async def resume(self) -> None:
        """Take back the deliveries this hub was running when it stopped: in-progress acks
        at once (the task stays ours if we are back within ack_wait); runs that ended
        meanwhile are settled now."""

        def read(db: Any) -> list[dict[str, Any]]:
            return list(db.query("SELECT * FROM fleet_runs WHERE state = 'running'"))

        rows = await self.hub.store.read(read)
        for row in rows:
            task = parse_task(row["task"])
            held = Held(task, self.fleet.lane_of(task), row["delivery"], row["reply"],
                        row["slot_reply"])  # fmt: skip
            self.held[(task.task_id, held.delivery)] = held
            await self.t.reply(held.task_reply, b"+WPI")
            await self.t.reply(held.slot_reply, b"+WPI")
            # find the run or task the delivery made (or make it, if it was not made yet):
            # the idempotency key answers with it, and with how it stands
            await self.start_run(held)
        if rows:
            log.info("fleet: resumed %d deliveries", len(rows))
