"""Scheduling: which queued run starts next, when the queue is looked at, why a run waits.

The drain starts queued runs while lanes allow, highest priority first, then oldest,
skipping agents whose pool is backed off or rate-delayed, workspaces whose session is
busy, full model lanes and runs still in their debounce. It runs on a wake-up (a dispatch,
`runner.poke`, `runner.start`), after every settled batch of ended runs, and on a timer:
every `drain_interval`, or sooner when a delay or debounce it saw runs out. Its timer is
the runner's clock.

Decisions made here where the design is silent: a followup run continues the run that
started last in its workspace before it; that run is looked up when the followup STARTS
(not when it is dispatched), on every path, so it is the run that really came before it.
A followup to a workspace where nothing has run starts without context.

Starts runs by claiming them one by one (queue.py; each claim holds its slot, its session
and its pool's start, so the next decision sees it) and handing them to the supervisor,
which spawns them in the background, without the state lock; never spawns, signals or
settles a process itself.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio

from fleetbus.bus import Context, Message

from . import events
from .clock import Clock, wait_until
from .queue import Pick, RunQueue
from .state import RunnerState
from .supervisor import Supervisor


class Scheduler:
    def __init__(
        self,
        state: RunnerState,
        queue: RunQueue,
        supervisor: Supervisor,
        clock: Clock,
        *,
        drain_interval: float,
        runs_dir: Path,
        publish: Callable[[Message, Context], Any],
    ) -> None:
        self.state = state
        self.queue = queue
        self.supervisor = supervisor
        self.clock = clock
        self.drain_interval = drain_interval
        self.runs_dir = runs_dir
        self.publish = publish
        self.woken = anyio.Event()
        self.wake_at: float | None = None  # when a delay or debounce the drain saw ends
        self._timer_at = 0.0  # when the loop drains next unless woken
        # "queue drained" is news only when the queue held runs that had to wait
        self.announce_drained = False

    def wake(self) -> None:
        """Drain as soon as the loop can."""
        self.woken.set()

    def _wake_at(self, at: float) -> None:
        """Have the loop drain again at `at` (sooner than it planned, if need be)."""
        if self.wake_at is None or at < self.wake_at:
            self.wake_at = at
        if at < self._timer_at - 0.001:
            self.woken.set()

    async def drain_loop(self) -> None:
        """Drain when woken, on the timer, and when a delay or debounce runs out."""
        while True:
            deadline = self.clock.now() + self.drain_interval
            if self.wake_at is not None:
                deadline = min(deadline, self.wake_at)
            self._timer_at = deadline
            await wait_until(self.clock, self.woken, deadline)
            self.woken = anyio.Event()
            async with self.state.lock:
                await self.drain()

    async def drain(self) -> None:
        """Start queued runs while lanes allow (the caller holds the state lock)."""
        self.wake_at = None
        state, lanes = self.state, self.state.lanes
        if state.frozen:
            return
        started = 0
        while lanes.running_total < lanes.total:
            now = self.clock.now()
            wanted: list[Pick] = []
            for agent in [a for a, n in state.queued_by_agent.items() if n > 0]:
                if agent not in state.agents or lanes.blocker(agent, None) is not None:
                    continue
                blocked = state.pools[agent].blocker(now)
                if blocked is not None:
                    self._wake_at(blocked[1])
                    continue
                wanted.append(Pick(agent, state.busy_workspaces(), self.full_models(agent)))
            if not wanted:
                break
            # the choice and the claim in one commit, made before anything is spawned
            row, later = await self.queue.claim_next(wanted, now, self.runs_dir)
            for at in later:  # runs in their debounce window: look again when it ends
                self._wake_at(at)
            if row is None:
                break
            self.state.remove_queued(row["agent"], row["workspace"])
            self.hold(row, now)
            self.supervisor.start(row)  # its slot is held: spawned in the background
            started += 1
        if self.announce_drained and state.queued_total == 0 and started:
            self.announce_drained = False
            for message, ctx in events.queue_drained(started):
                self.publish(message, ctx)

    def full_models(self, agent: str) -> list[str]:
        lanes = self.state.lanes
        return [
            m
            for (a, m), n in lanes.by_model.items()
            if a == agent and lanes.blocker(agent, m) is not None and n > 0
        ]

    def hold(self, row: dict[str, Any], now: float) -> None:
        """Claimed run `row` holds its slot, its session and its pool's start."""
        self.state.counts.moved("queued", "running")
        self.state.reserve(row["agent"], row["model"], row["workspace"])
        self.state.pools[row["agent"]].started(now)

    def startable(self, agent: str, model: str | None, now: float) -> bool:
        """True when a new run of `agent`/`model` could start now, nothing waiting ahead."""
        state = self.state
        return (
            not state.frozen
            and state.queued_total == 0
            and state.lanes.blocker(agent, model) is None
            and state.pools[agent].blocker(now) is None
        )

    def free_slots(self, agent: str, model: str | None, now: float) -> int:
        """Runs of `agent`/`model` that could start now, after the ones queued for it."""
        state = self.state
        pool = state.pools.get(agent)
        if state.frozen or pool is None or pool.blocker(now) is not None:
            return 0
        lanes = state.lanes
        free = lanes.total - lanes.running_total
        limit = lanes.agent_limits.get(agent)
        if limit is not None:
            free = min(free, limit - lanes.by_agent[agent])
        cap = lanes.model_limits.get(agent, {}).get(model) if model is not None else None
        if model is not None and cap is not None:
            free = min(free, cap - lanes.by_model[(agent, model)])
        return max(0, free - state.queued_by_agent[agent])

    def why_queued(self, row: dict[str, Any]) -> str:
        """Why a queued run waits, in words, from the live state."""
        state = self.state
        if state.frozen:
            return "frozen"
        if state.session_busy(row["workspace"]):
            return "session busy"
        now = self.clock.now()
        if (row.get("not_before") or 0) > now:
            return "debounce: waiting for more prompts"
        lane = state.lanes.blocker(row["agent"], row.get("model"))
        if lane is not None:
            return lane
        pool = state.pools.get(row["agent"])
        blocked = pool.blocker(now) if pool is not None else None
        if blocked is not None:
            return blocked[0]
        return "waiting for earlier runs"
