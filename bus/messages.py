"""Messages: broadcast facts, delivered to every matching subscriber through its own buffer.

Each subscription owns a bounded anyio memory stream. Publishing never waits: when a
subscriber's buffer is full the message is dropped *for that subscriber only* and
counted, so a slow or broken subscriber never blocks or breaks the others.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import anyio
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from pydantic import BaseModel, ConfigDict

from .context import Context

log = logging.getLogger("fleetbus.bus")

DEFAULT_BUFFER = 1024


class Message(BaseModel):
    """Base of every broadcast fact; subclasses set the class variable `topic`."""

    model_config = ConfigDict(frozen=True)
    topic: ClassVar[str] = "message"


class ChannelPush(Message):
    """A message meant for people and assistants (an MCP channel event, a `fleetbus tail` line).

    `content` is one readable line; `meta` holds string values under keys made only of
    letters, digits and underscores (Claude Code silently drops other keys).
    """

    topic: ClassVar[str] = "channel"
    channel: str
    content: str
    meta: dict[str, str] = {}


class ActionsChanged(Message):
    """The set of actions changed after the hub started (front ends refresh their tools)."""

    topic: ClassVar[str] = "bus.actions_changed"
    actions: int


class JobStarted(Message):
    topic: ClassVar[str] = "bus.job_started"
    job_id: str
    action: str


class JobProgress(Message):
    topic: ClassVar[str] = "bus.job_progress"
    job_id: str
    action: str
    progress: float | None = None
    message: str = ""


class JobCompleted(Message):
    topic: ClassVar[str] = "bus.job_completed"
    job_id: str
    action: str
    ok: bool
    result: Any = None
    error: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class Envelope:
    """One published message with its topic, sequence number, context and time."""

    seq: int
    topic: str
    message: Message
    context: Context
    ts: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "seq": self.seq,
            "topic": self.topic,
            "ts": self.ts,
            "data": self.message.model_dump(mode="json"),
            "context": self.context.to_dict(),
        }


def topic_matcher(patterns: Iterable[str] | None) -> tuple[frozenset[str], tuple[str, ...], bool]:
    """Split patterns into exact topics and prefixes (a pattern ending in `*`, such as
    `runner.*` or `bus.job_*`); None or `*` match every topic."""
    if patterns is None:
        return frozenset(), (), True
    exact: set[str] = set()
    prefixes: list[str] = []
    for p in patterns:
        if p in ("*", ""):
            return frozenset(), (), True
        if p.endswith("*"):
            prefixes.append(p[:-1])
        else:
            exact.add(p)
    return frozenset(exact), tuple(prefixes), False


class Subscription:
    """A subscriber's bounded buffer; iterate it to receive envelopes in publish order."""

    def __init__(
        self, name: str, topics: Iterable[str] | None, buffer: int = DEFAULT_BUFFER
    ) -> None:
        if buffer < 1 or buffer == math.inf:
            raise ValueError("a subscription's buffer must be a positive, finite size")
        self.name = name
        self.topics = tuple(topics) if topics is not None else None
        self._exact, self._prefixes, self._all = topic_matcher(topics)
        self._send: MemoryObjectSendStream[Envelope]
        self._receive: MemoryObjectReceiveStream[Envelope]
        self._send, self._receive = anyio.create_memory_object_stream[Envelope](buffer)
        self.buffer = buffer
        self.delivered = 0
        self.dropped = 0
        self.failures = 0
        self.closed = False

    def matches(self, topic: str) -> bool:
        if self._all or topic in self._exact:
            return True
        return any(topic.startswith(p) for p in self._prefixes)

    def offer(self, envelope: Envelope) -> None:
        """Queue without waiting; a full buffer drops and counts."""
        try:
            self._send.send_nowait(envelope)
        except anyio.WouldBlock:
            self.dropped += 1
            if self.dropped == 1 or self.dropped % 1000 == 0:
                log.warning("subscriber %s is slow: %d message(s) dropped", self.name, self.dropped)
        except (anyio.ClosedResourceError, anyio.BrokenResourceError):
            self.closed = True

    def close(self) -> None:
        self.closed = True
        self._send.close()
        self._receive.close()

    async def receive(self) -> Envelope:
        envelope = await self._receive.receive()
        self.delivered += 1
        return envelope

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> Envelope:
        try:
            return await self.receive()
        except (anyio.EndOfStream, anyio.ClosedResourceError):
            raise StopAsyncIteration from None

    def stats(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "topics": list(self.topics) if self.topics is not None else ["*"],
            "buffer": self.buffer,
            "delivered": self.delivered,
            "dropped": self.dropped,
            "failures": self.failures,
        }
