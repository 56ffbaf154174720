"""Helpers for testing code that uses the runner: an embedded hub with its own agents and
an injected wall clock, dispatch and status shortcuts, and `Watch`, which waits on bus
messages (never on fixed sleeps).

    async with runner_hub(home, agents={"mine": fake_agent()}) as hub:
        watch = Watch(hub)
        run = await dispatch(hub, "echo hi", agent="mine")
        assert (await watch.completed(run.run_id)).status == "completed"
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import yaml

from fleetbus.bus import Context, Subscription
from fleetbus.bus.hub import Hub

from .hub import embedded_hub, isolated_env
from .processes import group_members

ORIGIN = {"session": "s1"}
WAIT = 15  # seconds any single expected event may take on a slow machine
# 2026-01-01 12:00:00 UTC: far from the 06:00 daily reset unless a test moves it
NOON = 1767268800.0
FAKE = ["{python}", "-m", "fleetbus.testing.fake_agent", "{prompt}"]
# ignores SIGTERM: only SIGKILL ends it
STUBBORN = ["sh", "-c", "trap '' TERM; sleep 30", "{prompt}"]


class Clock:
    """An injected wall clock (epoch seconds) that moves only when a test says so."""

    def __init__(self, start: float = NOON) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.t += seconds


def fake_agent(**extra: Any) -> dict[str, Any]:
    """A manifest entry for the fake agent under another name."""
    return {
        "command": FAKE,
        "prompt": "arg",
        "concurrency": 4,
        "usage": {
            "input_tokens": r"fleetbus-usage: .*\binput_tokens=(\d+)",
            "output_tokens": r"fleetbus-usage: .*\boutput_tokens=(\d+)",
            "cost_usd": r"fleetbus-usage: .*\bcost_usd=([0-9.]+)",
        },
        "usage_limit_pattern": "FAKE USAGE LIMIT",
        **extra,
    }


@asynccontextmanager
async def runner_hub(
    home: Path,
    *,
    agents: dict[str, Any] | None = None,
    dispatch: dict[str, Any] | None = None,
    session: dict[str, Any] | None = None,
    clock: Callable[[], float] | None = None,
    env: dict[str, str] | None = None,
    agentic: dict[str, Any] | None = None,
    sync: dict[str, Any] | None = None,
) -> AsyncIterator[Hub]:
    """An embedded hub with the built-in agents plus `agents`, `dispatch` settings and the
    `agentic` and `sync` sections.

    Defaults that keep tests quick: kill_grace 2 s and no debounce (a test that wants
    them says so). On exit every run is killed and its process group checked gone.
    """
    home.parent.mkdir(parents=True, exist_ok=True)
    config = home.parent / "fleetbus.yaml"
    spec: dict[str, Any] = {"kill_grace": 2, **(dispatch or {})}
    spec["session"] = {"debounce_ms": 0, **(session or {})}
    manifest: dict[str, Any] = {"agents": agents or {}, "dispatch": spec}
    if agentic is not None:
        manifest["agentic"] = agentic
    if sync is not None:
        manifest["sync"] = sync
    config.write_text(yaml.safe_dump(manifest))
    hub_env = {**isolated_env(home, config=config), **(env or {})}
    kwargs: dict[str, Any] = {"wall_clock": clock} if clock is not None else {}
    async with embedded_hub(home, env=hub_env, serve_socket=False, **kwargs) as hub:
        try:
            yield hub
        finally:
            with anyio.fail_after(60, shield=True):
                await hub.bus.perform("runner.kill", {})
                result = await status(hub, limit=1000)
                for run in result.runs:
                    if run.pid:
                        assert not group_members(run.pid), f"run {run.run_id} left processes"


async def dispatch(hub: Hub, prompt: str, workspace: str = "a/b/c", **kw: Any) -> Any:
    payload = {"agent": "fake", "prompt": prompt, "workspace": workspace, **kw}
    return await hub.bus.perform(
        "runner.dispatch", payload, context=Context(caller="test", origin=ORIGIN)
    )


async def status(hub: Hub, **kw: Any) -> Any:
    return await hub.bus.perform("runner.status", kw)


async def run_info(hub: Hub, run_id: str) -> Any:
    for run in (await status(hub, limit=1000)).runs:
        if run.run_id == run_id:
            return run
    raise AssertionError(f"no run {run_id} in runner.status")


class Watch:
    """Every message of some topics since it was opened; wait for one that matches."""

    def __init__(self, hub: Hub, topics: list[str] | None = None) -> None:
        self.sub: Subscription = hub.bus.open_subscription(topics or ["runner.*", "channel"])
        self.seen: list[Any] = []  # envelopes; Any: their messages are of many types

    async def wait(self, predicate: Callable[[Any], bool], timeout: float = WAIT) -> Any:
        """The first envelope (already seen or still to come) that satisfies `predicate`."""
        for envelope in self.seen:
            if predicate(envelope):
                return envelope
        with anyio.fail_after(timeout):
            while True:
                envelope = await self.sub.receive()
                self.seen.append(envelope)
                if predicate(envelope):
                    return envelope

    async def completed(self, run_id: str, timeout: float = WAIT) -> Any:
        """The `runner.run_completed` message of `run_id`."""
        return (await self.wait(on("runner.run_completed", run_id), timeout)).message

    async def started(self, run_id: str, timeout: float = WAIT) -> Any:
        return (await self.wait(on("runner.run_started", run_id), timeout)).message

    def drain(self) -> list[Any]:
        """Every envelope so far, including any still buffered."""
        while True:
            try:
                self.seen.append(self.sub._receive.receive_nowait())
            except anyio.WouldBlock:
                return self.seen

    def index(self, topic: str, run_id: str) -> int:
        """Where the `topic` message of `run_id` is among those seen."""
        return next(n for n, e in enumerate(self.drain()) if on(topic, run_id)(e))

    def messages(self, topic: str) -> list[Any]:
        return [e.message for e in self.drain() if e.topic == topic]


def on(topic: str, run_id: str | None = None) -> Callable[[Any], bool]:
    def match(e: Any) -> bool:
        return e.topic == topic and (run_id is None or getattr(e.message, "run_id", None) == run_id)

    return match
