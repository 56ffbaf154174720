"""The runner's one clock: what time it is and sleeping until a time, for every timer.

The drain timer, a run's deadline and the kill grace all read `now()` and wait with
`sleep_until()` on the same `Clock`, so a test that drives the clock drives them all.
Times are epoch seconds (rates reset at a UTC hour of the day).

- `SystemClock` reads a `now` callable (`time.time` by default) and sleeps in real time
  for the difference; built over the hub's injected `wall_clock` callable, it keeps that
  injection working (a frozen callable gives real sleeps of the computed remainder).
- `ManualClock` moves only when a test says so (`advance`, `set`): its sleepers wake when
  the time reaches their deadline, with no real waiting. It is callable, so it can be the
  hub's `wall_clock`, and the runner then uses it as is (`clock_for`).

Owns no runner state; never imports the rest of the runner.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import anyio
import anyio.lowlevel


@runtime_checkable
class Clock(Protocol):
    """Epoch seconds, and a way to wait for one."""

    def now(self) -> float:
        """The current time (epoch seconds)."""
        ...

    async def sleep_until(self, deadline: float) -> None:
        """Return once the clock reads `deadline` or later."""
        ...


class SystemClock:
    """The real clock, or any `now` callable with real sleeps of the remaining time."""

    def __init__(self, now: Callable[[], float] = time.time) -> None:
        self._now = now

    def now(self) -> float:
        return self._now()

    async def sleep_until(self, deadline: float) -> None:
        await anyio.sleep(max(0.0, deadline - self._now()))


@dataclass(eq=False)
class _Sleeper:
    deadline: float
    woken: anyio.Event = field(default_factory=anyio.Event)


class ManualClock:
    """A clock for tests: it stands still until `advance` or `set` moves it."""

    def __init__(self, start: float = 0.0) -> None:
        self.t = start
        self._sleepers: list[_Sleeper] = []
        self._changed: anyio.Event | None = None

    def now(self) -> float:
        return self.t

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float) -> None:
        self.set(self.t + seconds)

    def set(self, t: float) -> None:
        """Move the clock to `t` and wake every sleeper whose deadline has come."""
        self.t = t
        for sleeper in self._sleepers:
            if sleeper.deadline <= t:
                sleeper.woken.set()

    @property
    def deadlines(self) -> list[float]:
        """What the tasks asleep on this clock wait for, soonest first."""
        return sorted(s.deadline for s in self._sleepers if not s.woken.is_set())

    async def sleep_until(self, deadline: float) -> None:
        if deadline <= self.t:
            await anyio.lowlevel.checkpoint()
            return
        sleeper = _Sleeper(deadline)
        self._sleepers.append(sleeper)
        self._notify()
        try:
            await sleeper.woken.wait()
        finally:
            self._sleepers.remove(sleeper)

    async def wait_for_sleeper(self, deadline: float) -> None:
        """Return once some task sleeps until `deadline` (to the microsecond): a test
        moves the clock past a timer only after the timer is set."""
        while not any(abs(d - deadline) < 1e-6 for d in self.deadlines):
            if self._changed is None:
                self._changed = anyio.Event()
            await self._changed.wait()

    def _notify(self) -> None:
        if self._changed is not None:
            self._changed.set()
            self._changed = None


def clock_for(wall_clock: Callable[[], float]) -> Clock:
    """The runner's clock for a hub's `wall_clock`: the clock itself when it is one."""
    return wall_clock if isinstance(wall_clock, Clock) else SystemClock(wall_clock)


async def wait_until(clock: Clock, event: anyio.Event, deadline: float) -> bool:
    """Wait for `event` until `deadline` on `clock`; True when the event was set."""
    if event.is_set():
        return True
    async with anyio.create_task_group() as tg:

        async def alarm() -> None:
            await clock.sleep_until(deadline)
            tg.cancel_scope.cancel()

        tg.start_soon(alarm)
        await event.wait()
        tg.cancel_scope.cancel()
    return event.is_set()
