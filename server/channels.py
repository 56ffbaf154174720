"""Channel events for MCP sessions: who gets an event, and how bursts are coalesced.

A channel message on the bus (`ChannelPush`) carries the context of the call that caused
it; a run dispatched from an MCP session has `origin.mcp_session` set. Such events go to
that session only (when it is one of this server's); events without a session (fleet-wide
channels, runs started from the CLI or by agents) go to every session of this server.

Each session has a `Coalescer`, a token bucket: events are sent at once while its budget
lasts (4, refilled at one per `window`); past that they are held, for `window` (50 ms) at
most, and sent as one coalesced event whose meta names every run in `run_ids` and its
status in `statuses` (`r1:completed,r2:failed`), so a burst never floods a session, no
status lives only in the (capped) text, and no event waits more than `window`.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import anyio

META_KEY = re.compile(r"[^A-Za-z0-9_]")
SESSION_KEY = "mcp_session"
FLEET_CHANNEL = "fleet"  # fleet-wide events go to every session, whoever caused them
MAX_CONTENT = 2000
COALESCE_WINDOW = 0.05  # the longest an event is held back by coalescing


@dataclass(frozen=True)
class ChannelEvent:
    content: str
    meta: dict[str, str]


def clean_meta(meta: Mapping[str, Any]) -> dict[str, str]:
    """Keys of letters, digits and underscores only (others are dropped by Claude Code),
    string values."""
    out: dict[str, str] = {}
    for key, value in meta.items():
        name = META_KEY.sub("_", str(key)) or "key"
        out[name] = value if isinstance(value, str) else str(value)
    return out


def event_from_envelope(envelope: Mapping[str, Any]) -> tuple[ChannelEvent, str | None]:
    """The event to send and the MCP session it belongs to (None: every session)."""
    data = envelope.get("data", {})
    meta = dict(data.get("meta") or {})
    meta.setdefault("channel", str(data.get("channel", "")))
    content = str(data.get("content", ""))[:MAX_CONTENT]
    origin = (envelope.get("context") or {}).get("origin") or {}
    owner = None if meta["channel"] == FLEET_CHANNEL else origin.get(SESSION_KEY)
    return ChannelEvent(content, clean_meta(meta)), owner


def coalesce(events: list[ChannelEvent]) -> ChannelEvent:
    """One event standing for several: one line per run, `run_ids` comma-separated."""
    if len(events) == 1:
        return events[0]
    latest: dict[str, ChannelEvent] = {}  # one status per run: its latest event
    others: list[ChannelEvent] = []
    for e in events:
        if "run_id" in e.meta:
            latest[e.meta["run_id"]] = e  # keeps the run's first place, takes its last status
        else:
            others.append(e)
    channels = sorted({e.meta.get("channel", "") for e in events})
    parts = [f"{rid} {e.meta.get('status', '?')}: {e.content}" for rid, e in latest.items()]
    parts += [e.content for e in others]
    meta = {
        "channel": channels[0] if len(channels) == 1 else "mixed",
        "coalesced": str(len(events)),
        "run_ids": ",".join(latest),
        "statuses": ",".join(f"{rid}:{e.meta.get('status', '?')}" for rid, e in latest.items()),
    }
    content = f"{len(events)} fleetbus events: " + "; ".join(parts)
    return ChannelEvent(content[:MAX_CONTENT], meta)


class Coalescer:
    """Sends one session's events at once while its budget lasts (`burst` events, refilled
    at one per `window`); past that, holds them and sends them as one coalesced event
    `window` seconds after the first was held, so a burst never floods a session."""

    def __init__(
        self,
        send: Callable[[ChannelEvent], Awaitable[None]],
        task_group: anyio.abc.TaskGroup,
        *,
        window: float = COALESCE_WINDOW,
        burst: int = 4,
    ) -> None:
        self._send = send
        self._tg = task_group
        self.window = window
        self.burst = burst
        self._tokens = float(burst)
        self._last = anyio.current_time()
        self._held: list[ChannelEvent] = []
        self._flushing = False

    def _refill(self) -> None:
        now = anyio.current_time()
        if self.window > 0:
            self._tokens = min(self.burst, self._tokens + (now - self._last) / self.window)
        else:
            self._tokens = float(self.burst)
        self._last = now

    async def push(self, event: ChannelEvent) -> None:
        if not self._held:
            self._refill()
            if self._tokens >= 1:
                self._tokens -= 1
                await self._send(event)
                return
        self._held.append(event)
        if not self._flushing:
            self._flushing = True
            self._tg.start_soon(self._flush_later)

    async def _flush_later(self) -> None:
        await anyio.sleep(self.window)
        held, self._held = self._held, []
        self._flushing = False
        self._refill()
        self._tokens = max(0.0, self._tokens - 1)
        await self._send(coalesce(held))
