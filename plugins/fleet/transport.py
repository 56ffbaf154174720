"""Everything fleetbus says to NATS JetStream, behind one class; the only module that
imports `nats` (the optional extra `fleetbus[fleet]`).

What lives on the server, under the configured prefix `P` (upper-cased for streams):
- `P_DISPATCH`, work-queue retention, subjects `P.dispatch.<agent>.<priority>`: the
  dispatch queue; one durable pull consumer per agent and priority.
- `P_SLOTS`, work-queue retention, subjects `P.slot.<agent>`: tokens, one per fleet-wide
  slot. A hub holds a token for as long as it runs a fleet task (in-progress acks) and
  gives it back with a NAK; the consumer's `max_ack_pending` is the agent's fleet-wide
  cap, so the cap holds across priorities, and a lost hub's tokens come back after
  `ack_wait` like its tasks.
- `P_EVENTS`, limits retention for a day, subjects `P.events.<node>`: what happened to a
  task, for the hub it came from (one durable consumer per node, so a hub that was away
  catches up).
- key-value buckets `P_nodes` (heartbeats, with a TTL) and `P_tasks` (claims and
  outcomes: the fence).
- core subjects `P.bus.<node>`: every hub's run and task messages, for `fleetbus tail`.

Acks go to a delivery's reply subject, which any connection may use: a hub restarted
within `ack_wait` resumes the in-progress acks of the deliveries it stored.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    KeyValueConfig,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.kv import KeyValue

PRIORITIES = ("critical", "high", "medium", "low")
EVENTS_MAX_AGE = 86400.0
TASKS_TTL = 7 * 86400.0
NODES_TTL = 3600.0  # a node gone this long leaves the registry


class FleetError(Exception):
    """One clear line about the fleet's NATS side (unreachable, refused, mismatched)."""


@dataclass(frozen=True, slots=True)
class Delivery:
    """One message handed to this hub: its body, where to ack it, which delivery it is."""

    data: bytes
    reply: str
    delivered: int
    stream_seq: int
    subject: str


def _delivery(msg: Msg) -> Delivery:
    meta = msg.metadata
    return Delivery(msg.data, msg.reply, meta.num_delivered, meta.sequence.stream, msg.subject)


def _status(msg: Msg) -> str | None:
    return (msg.headers or {}).get("Status") if msg.headers else None


def describe(e: BaseException) -> str:
    """What went wrong talking to NATS, in one line."""
    text = str(e).strip() or type(e).__name__
    low = text.lower()
    if "authorization" in low or "authentication" in low or "permissions" in low:
        return (
            f"the NATS server refused the credentials ({text}): check the variable "
            "fleet.credentials_env names"
        )
    if isinstance(e, nats.errors.NoServersError | ConnectionRefusedError | OSError):
        return f"the NATS server cannot be reached ({text})"
    return text


class Transport:
    """One NATS connection of a hub and the fleet's streams, consumers and buckets."""

    def __init__(self, urls: Sequence[str], prefix: str, node: str) -> None:
        self.urls = list(urls)
        self.prefix = prefix
        self.node = node
        self.up = prefix.upper()
        self.nc: Client | None = None
        self.js: JetStreamContext | None = None
        self.nodes_kv: KeyValue | None = None
        self.tasks_kv: KeyValue | None = None
        self.connected = False
        self.last_error = ""
        self.inboxes: dict[str, tuple[anyio.Lock, Any]] = {}  # per pull consumer
        self.disconnects = 0  # times the connection was lost (acks may not have gone out)

    @property
    def where(self) -> str:
        """The URLs, without any credentials in them."""
        return ", ".join(u.split("@")[-1] if "@" in u else u for u in self.urls)

    # -- names -------------------------------------------------------------------------------
    @property
    def dispatch_stream(self) -> str:
        return f"{self.up}_DISPATCH"

    def dispatch_subject(self, agent: str, priority: str) -> str:
        return f"{self.prefix}.dispatch.{agent}.{priority}"

    def dispatch_consumer(self, agent: str, priority: str) -> str:
        return f"{self.up}_dispatch_{agent}_{priority}"

    def slot_consumer(self, agent: str) -> str:
        return f"{self.up}_slot_{agent}"

    # -- connecting --------------------------------------------------------------------------
    async def connect(self, credentials: str | None, connect_timeout: int = 2) -> None:
        """Connect (NATS then keeps reconnecting by itself); FleetError says why not."""
        options: dict[str, Any] = {}
        if credentials:
            creds = credentials.strip()
            if creds.startswith("SU") and " " not in creds and len(creds) > 40:
                options["nkeys_seed_str"] = creds
            elif creds.endswith(".creds") and Path(creds).is_file():
                options["user_credentials"] = creds
            else:
                options["token"] = creds

        async def on_disconnect() -> None:
            if self.nc is not None:  # not while the first connect is still trying
                self.connected = False
                self.disconnects += 1
                self.last_error = "disconnected from the NATS server; reconnecting"

        async def on_reconnect() -> None:
            self.connected = True
            self.last_error = ""

        async def on_error(e: Exception) -> None:
            if self.nc is not None or not self.last_error:  # the first reason, while connecting
                self.last_error = describe(e)

        # nats-py retries a first connect forever when reconnecting is on; bound it and
        # report the error it met (refused, unreachable) instead.
        nc = Client()
        self.last_error = ""
        with anyio.move_on_after(connect_timeout + 1.5):
            try:
                await nc.connect(
                    servers=self.urls,
                    name=f"fleetbus {self.node}",
                    connect_timeout=connect_timeout,
                    allow_reconnect=True,
                    max_reconnect_attempts=-1,
                    reconnect_time_wait=1,
                    disconnected_cb=on_disconnect,
                    reconnected_cb=on_reconnect,
                    error_cb=on_error,
                    **options,
                )
            except Exception as e:
                self.last_error = describe(e)
        if not nc.is_connected:
            with contextlib.suppress(Exception):
                await nc.close()
            raise FleetError(
                self.last_error or f"the NATS server cannot be reached at {self.where}"
            )
        self.nc = nc
        self.js = self.nc.jetstream(timeout=5)
        self.connected = True

    async def close(self) -> None:
        if self.nc is not None and not self.nc.is_closed:
            try:
                await self.nc.drain()
            except Exception:
                await self.nc.close()

    def _js(self) -> JetStreamContext:
        if self.js is None:
            raise FleetError("not connected to NATS")
        return self.js

    def _nc(self) -> Client:
        if self.nc is None:
            raise FleetError("not connected to NATS")
        return self.nc

    # -- setting up --------------------------------------------------------------------------
    async def setup(
        self, lanes: Mapping[str, str], caps: Mapping[str, int], ack_wait: float,
        max_deliver: int,
    ) -> None:  # fmt: skip
        """Make (or check) the streams, consumers and buckets: a dispatch consumer per lane
        (an agent, or a lane of agentic tasks) and priority, a slot consumer per slot
        (`lanes` maps a lane to its slot, `caps` a slot to its fleet-wide cap). FleetError
        names a setting that differs from what another hub or version made."""
        try:
            await self._stream(f"{self.up}_DISPATCH", f"{self.prefix}.dispatch.>", "workqueue")
            await self._stream(f"{self.up}_SLOTS", f"{self.prefix}.slot.>", "workqueue")
            await self._stream(
                f"{self.up}_EVENTS", f"{self.prefix}.events.>", "limits", EVENTS_MAX_AGE
            )
            for lane in lanes:
                for priority in PRIORITIES:
                    await self._consumer(
                        self.dispatch_stream,
                        self.dispatch_consumer(lane, priority),
                        self.dispatch_subject(lane, priority),
                        ack_wait=ack_wait,
                        max_deliver=max_deliver,
                        max_ack_pending=-1,
                    )
            for slot in sorted(set(lanes.values())):
                await self._consumer(
                    f"{self.up}_SLOTS",
                    self.slot_consumer(slot),
                    f"{self.prefix}.slot.{slot}",
                    ack_wait=ack_wait,
                    max_deliver=-1,
                    max_ack_pending=caps[slot],
                )
                await self._fill_slots(slot, caps[slot])
            await self._consumer(
                f"{self.up}_EVENTS",
                f"{self.up}_events_{self.node}",
                f"{self.prefix}.events.{self.node}",
                ack_wait=30,
                max_deliver=-1,
                max_ack_pending=1000,
            )
            self.nodes_kv = await self._bucket(f"{self.up}_nodes", ttl=NODES_TTL)
            self.tasks_kv = await self._bucket(f"{self.up}_tasks", ttl=TASKS_TTL)
        except FleetError:
            raise
        except Exception as e:
            raise FleetError(f"setting up the fleet's streams failed: {describe(e)}") from None

    async def _stream(
        self, name: str, subject: str, retention: str, max_age: float | None = None
    ) -> None:
        js = self._js()
        want = StreamConfig(
            name=name,
            subjects=[subject],
            retention=RetentionPolicy(retention),
            storage=StorageType.FILE,
            max_age=max_age,
        )
        try:
            info = await js.stream_info(name)
        except nats.js.errors.NotFoundError:
            await js.add_stream(want)
            return
        have = info.config
        for setting, ours, theirs in (
            ("subjects", [subject], list(have.subjects or [])),
            ("retention", want.retention, have.retention),
            ("storage", want.storage, have.storage),
        ):
            if ours != theirs:
                raise FleetError(
                    f"the stream {name} on the NATS server has {setting}={_plain(theirs)}, "
                    f"fleetbus needs {_plain(ours)}: it was made by another version or by "
                    "hand; remove it or give this fleet another fleet.prefix"
                )

    async def _consumer(
        self,
        stream: str,
        durable: str,
        subject: str,
        *,
        ack_wait: float,
        max_deliver: int,
        max_ack_pending: int,
    ) -> None:
        js = self._js()
        try:
            info = await js.consumer_info(stream, durable)
        except nats.js.errors.NotFoundError:
            await js.add_consumer(
                stream,
                ConsumerConfig(
                    durable_name=durable,
                    ack_policy=AckPolicy.EXPLICIT,
                    ack_wait=ack_wait,
                    max_deliver=max_deliver,
                    max_ack_pending=max_ack_pending,
                    filter_subject=subject,
                    max_waiting=512,
                ),
            )
            return
        have = info.config
        names = {"ack_wait": "fleet.ack_wait", "max_deliver": "fleet.max_deliver"}
        names["max_ack_pending"] = "the agent's fleet cap (fleet.caps)"
        for setting, ours, theirs in (
            ("filter_subject", subject, have.filter_subject),
            ("ack_wait", float(ack_wait), float(have.ack_wait or 0)),
            ("max_deliver", max_deliver, have.max_deliver),
            ("max_ack_pending", max_ack_pending, have.max_ack_pending),
        ):
            if ours != theirs:
                what = names.get(setting, setting)
                raise FleetError(
                    f"the consumer {durable} has {setting}={_plain(theirs)} but this hub's "
                    f"{what} gives {_plain(ours)}: give every hub the same fleet settings"
                )

    async def _fill_slots(self, agent: str, cap: int) -> None:
        """Put tokens in the slot stream until there are at least `cap` (extra ones from
        two hubs filling at once do no harm: `max_ack_pending` holds the cap)."""
        js = self._js()
        info = await js.consumer_info(f"{self.up}_SLOTS", self.slot_consumer(agent))
        have = (info.num_pending or 0) + (info.num_ack_pending or 0)
        for _ in range(max(0, cap - have)):
            await js.publish(f"{self.prefix}.slot.{agent}", b"slot")

    async def _bucket(self, name: str, ttl: float | None) -> KeyValue:
        js = self._js()
        try:
            return await js.key_value(name)
        except nats.js.errors.BucketNotFoundError:
            return await js.create_key_value(
                KeyValueConfig(bucket=name, ttl=ttl, history=1, storage=StorageType.FILE)
            )

    # -- the queue ---------------------------------------------------------------------------
    async def publish_task(self, agent: str, priority: str, task_id: str, body: bytes) -> int:
        """Put a task in the queue (a second publish of the same id is dropped by the
        stream's duplicate window); its stream sequence."""
        ack = await self._js().publish(
            self.dispatch_subject(agent, priority), body, headers={"Nats-Msg-Id": task_id}
        )
        return ack.seq

    async def next_messages(
        self, stream: str, consumer: str, batch: int, wait: float | None
    ) -> list[Msg]:
        """Up to `batch` messages of a pull consumer: those waiting now, or, when there are
        none and `wait` is given, the first to come within `wait` seconds."""
        got = await self._pull(stream, consumer, {"batch": batch, "no_wait": True}, batch, 5.0)
        if got or wait is None:
            return got
        request = {"batch": 1, "expires": int(wait * 1e9)}
        return await self._pull(stream, consumer, request, 1, wait + 5.0)

    async def _pull(
        self, stream: str, consumer: str, request: dict[str, Any], batch: int, timeout: float
    ) -> list[Msg]:
        # Not nc.request: a delivered message keeps its own subject, not the inbox's, so
        # the client's shared reply inbox could not match it. One inbox per consumer,
        # kept, one pull at a time on it: a message that comes after its pull gave up
        # waits there for the next pull instead of being lost until ack_wait.
        nc = self._nc()
        key = f"{stream}.{consumer}"
        inbox = self.inboxes.get(key)
        if inbox is None:
            inbox = self.inboxes[key] = (anyio.Lock(), await nc.subscribe(nc.new_inbox()))
        lock, sub = inbox
        got: list[Msg] = []
        async with lock:  # a late message is read first and counts in the batch
            await nc.publish(
                f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}",
                json.dumps(request).encode(),
                reply=sub.subject,
            )
            try:
                while len(got) < batch:
                    msg = await sub.next_msg(timeout=timeout)
                    if _status(msg) is not None or not msg.reply:
                        break  # 404 no (more) messages, 408 expired, 409 ...
                    got.append(msg)
            except nats.errors.TimeoutError:
                pass  # what came is ours; an unanswered pull just found nothing
        return got

    async def take_slots(self, slot: str, n: int, wait: float) -> list[Delivery]:
        """Up to `n` fleet-wide slots of `slot` (waiting `wait` s for a first one)."""
        msgs = await self.next_messages(f"{self.up}_SLOTS", self.slot_consumer(slot), n, wait)
        return [_delivery(m) for m in msgs]

    async def take_tasks(
        self, lane: str, n: int, priorities: Collection[str] = PRIORITIES
    ) -> tuple[list[Delivery], list[str]]:
        """Up to `n` tasks waiting in `lane`, highest priority first, oldest first, looking
        only at `priorities`; also the priorities found empty."""
        out: list[Delivery] = []
        empty: list[str] = []
        for priority in PRIORITIES:
            if priority not in priorities:
                continue
            want = n - len(out)
            consumer = self.dispatch_consumer(lane, priority)
            msgs = await self.next_messages(self.dispatch_stream, consumer, want, None)
            out += [_delivery(m) for m in msgs]
            if len(msgs) < want:
                empty.append(priority)
            if len(out) >= n:
                break
        return out, empty

    async def depth(self, lane: str) -> dict[str, int]:
        """Tasks waiting in `lane` by priority (not yet handed to a hub)."""
        js = self._js()
        out: dict[str, int] = {}
        for priority in PRIORITIES:
            info = await js.consumer_info(
                self.dispatch_stream, self.dispatch_consumer(lane, priority)
            )
            out[priority] = int(info.num_pending or 0)
        return out

    async def reply(self, reply: str, verb: bytes) -> None:
        """`+ACK`, `+WPI` (in progress), `-NAK` or `+TERM` to a delivery."""
        await self._nc().publish(reply, verb)

    async def flush(self) -> None:
        await self._nc().flush(timeout=5)

    # -- events ------------------------------------------------------------------------------
    async def publish_event(
        self, node: str, event: dict[str, Any], msg_id: str, *, confirm: bool = True
    ) -> None:
        """Put an event on the events stream for `node`; `confirm`: wait until it is
        stored (an end, before the task is acked), else send and go on (a start)."""
        subject = f"{self.prefix}.events.{node}"
        body = json.dumps(event).encode()
        headers = {"Nats-Msg-Id": msg_id}
        if confirm:
            await self._js().publish(subject, body, headers=headers)
        else:
            await self._nc().publish(subject, body, headers=headers)

    async def next_events(self, batch: int, wait: float) -> list[Msg]:
        consumer = f"{self.up}_events_{self.node}"
        return await self.next_messages(f"{self.up}_EVENTS", consumer, batch, wait)

    async def mirror(self, body: bytes) -> None:
        await self._nc().publish(f"{self.prefix}.bus.{self.node}", body)

    async def on_mirror(self, handler: Callable[[str, bytes], Awaitable[None]]) -> Any:
        """Hear the other hubs' mirrored messages; the subscription (to unsubscribe)."""

        async def cb(msg: Msg) -> None:
            node = msg.subject.rsplit(".", 1)[-1]
            if node != self.node:
                await handler(node, msg.data)

        return await self._nc().subscribe(f"{self.prefix}.bus.*", cb=cb)

    async def nudge(self, lane: str, priority: str) -> None:
        """Tell every hub that `lane` has new work of `priority` (core NATS: a hint only)."""
        await self._nc().publish(f"{self.prefix}.nudge.{lane}", priority.encode())

    async def on_nudge(self, handler: Callable[[str, str], None]) -> None:
        async def cb(msg: Msg) -> None:
            handler(msg.subject.rsplit(".", 1)[-1], msg.data.decode(errors="replace"))

        await self._nc().subscribe(f"{self.prefix}.nudge.*", cb=cb)

    async def follow(self) -> None:
        """Ask every hub to mirror its messages for a while."""
        await self._nc().publish(f"{self.prefix}.follow", self.node.encode())

    async def on_follow(self, handler: Callable[[], None]) -> None:
        async def cb(msg: Msg) -> None:
            handler()

        await self._nc().subscribe(f"{self.prefix}.follow", cb=cb)

    async def on_dead_letter(self, handler: Callable[[int], Awaitable[None]]) -> None:
        """Call `handler(stream_seq)` when a dispatch reaches max_deliver."""

        async def cb(msg: Msg) -> None:
            try:
                seq = int(json.loads(msg.data)["stream_seq"])
            except (ValueError, KeyError, TypeError):
                return
            await handler(seq)

        await self._nc().subscribe(
            f"$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES.{self.dispatch_stream}.*", cb=cb
        )

    async def stored(self, seq: int) -> bytes | None:
        """The body of dispatch `seq`, if it is still in the stream."""
        try:
            raw = await self._js().get_msg(self.dispatch_stream, seq)
        except nats.js.errors.NotFoundError:
            return None
        return raw.data

    async def remove(self, seq: int) -> None:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await self._js().delete_msg(self.dispatch_stream, seq)

    # -- key-value ---------------------------------------------------------------------------
    def _tasks(self) -> KeyValue:
        if self.tasks_kv is None:
            raise FleetError("not set up")
        return self.tasks_kv

    async def get(self, key: str) -> tuple[dict[str, Any] | None, int]:
        try:
            entry = await self._tasks().get(key)
        except nats.js.errors.KeyNotFoundError:
            return None, 0
        if entry.value is None:
            return None, entry.revision or 0
        return json.loads(entry.value), entry.revision or 0

    async def create(self, key: str, value: dict[str, Any]) -> bool:
        """Write `key` unless it exists; False when it did."""
        try:
            await self._tasks().create(key, json.dumps(value).encode())
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        return True

    async def update(self, key: str, value: dict[str, Any], revision: int) -> bool:
        """Write `key` if it is still at `revision`; False when someone wrote first."""
        try:
            await self._tasks().update(key, json.dumps(value).encode(), last=revision)
        except nats.js.errors.KeyWrongLastSequenceError:
            return False
        return True

    async def create_soon(self, key: str, value: dict[str, Any]) -> None:
        """Write `key` unless it exists, without waiting for the answer (the server keeps
        the create-only rule; later publishes on this connection reach it after)."""
        await self._nc().publish(
            f"$KV.{self.up}_tasks.{key}",
            json.dumps(value).encode(),
            headers={"Nats-Expected-Last-Subject-Sequence": "0"},
        )

    async def put(self, key: str, value: dict[str, Any]) -> None:
        await self._tasks().put(key, json.dumps(value).encode())

    async def heartbeat(self, value: dict[str, Any]) -> None:
        if self.nodes_kv is not None:
            await self.nodes_kv.put(self.node, json.dumps(value).encode())

    async def nodes(self) -> list[dict[str, Any]]:
        kv = self.nodes_kv
        if kv is None:
            return []
        try:
            keys = await kv.keys()
        except nats.js.errors.NoKeysError:
            return []
        out = []
        for key in keys:
            try:
                entry = await kv.get(key)
            except nats.js.errors.KeyNotFoundError:
                continue
            if entry.value:
                out.append(json.loads(entry.value))
        return out


def _plain(value: object) -> str:
    return str(getattr(value, "value", value))
