"""Capacity: concurrency lanes, per-agent rates, and the failure circuit breaker.

Everything here is plain state plus an injected `now` (epoch seconds), so rates and
backoff are tested with a fake clock. Never touches the database, the bus or a process.
"""

from __future__ import annotations

import math
import time
from collections import Counter, deque
from dataclasses import dataclass, field

from .config import AgentRates, AgentSpec, BreakerSpec

DAY = 86400.0


def hhmm(ts: float) -> str:
    return time.strftime("%H:%M", time.gmtime(ts))


@dataclass
class Lanes:
    """Concurrency caps: the global total, per agent, and per agent and model."""

    total: int
    agent_limits: dict[str, int | None]
    model_limits: dict[str, dict[str, int]]
    running_total: int = 0
    by_agent: Counter[str] = field(default_factory=Counter)
    by_model: Counter[tuple[str, str]] = field(default_factory=Counter)

    @classmethod
    def from_agents(cls, total: int, agents: dict[str, AgentSpec]) -> Lanes:
        agent_limits: dict[str, int | None] = {}
        model_limits: dict[str, dict[str, int]] = {}
        for name, spec in agents.items():
            agent_limits[name], model_limits[name] = spec.limits()
        return cls(total, agent_limits, model_limits)

    def blocker(self, agent: str, model: str | None) -> str | None:
        """Why a run of `agent`/`model` cannot start now, or None when a slot is free."""
        if self.running_total >= self.total:
            return f"lane full: total {self.running_total}/{self.total}"
        limit = self.agent_limits.get(agent)
        if limit is not None and self.by_agent[agent] >= limit:
            return f"lane full: {agent} {self.by_agent[agent]}/{limit}"
        if model is not None:
            model_limit = self.model_limits.get(agent, {}).get(model)
            if model_limit is not None and self.by_model[(agent, model)] >= model_limit:
                return f"lane full: {agent}:{model} {self.by_model[(agent, model)]}/{model_limit}"
        return None

    def add(self, agent: str, model: str | None) -> None:
        self.running_total += 1
        self.by_agent[agent] += 1
        if model is not None:
            self.by_model[(agent, model)] += 1

    def remove(self, agent: str, model: str | None) -> None:
        self.running_total -= 1
        self.by_agent[agent] -= 1
        if model is not None:
            self.by_model[(agent, model)] -= 1

    def info(self) -> dict[str, tuple[int, int | None]]:
        lanes: dict[str, tuple[int, int | None]] = {"total": (self.running_total, self.total)}
        for agent, limit in sorted(self.agent_limits.items()):
            lanes[agent] = (self.by_agent[agent], limit)
            for model, model_limit in sorted(self.model_limits.get(agent, {}).items()):
                lanes[f"{agent}:{model}"] = (self.by_model[(agent, model)], model_limit)
        return lanes


@dataclass
class Pool:
    """One agent's rate state: daily count, delays between starts, backoff, breaker."""

    name: str
    rates: AgentRates
    breaker: BreakerSpec
    started_today: int = 0
    counted_from: float = 0.0  # the reset boundary `started_today` counts from
    last_start: float | None = None
    backoff_until: float = 0.0
    backoff_reason: str = ""
    fast_failures: deque[float] = field(default_factory=deque)

    def _reset_offset(self) -> float:
        hours, minutes = self.rates.reset_utc.split(":")
        return int(hours) * 3600 + int(minutes) * 60

    def last_reset(self, now: float) -> float:
        day = math.floor(now / DAY) * DAY
        boundary = day + self._reset_offset()
        return boundary if boundary <= now else boundary - DAY

    def next_reset(self, now: float) -> float:
        return self.last_reset(now) + DAY

    def _roll(self, now: float) -> None:
        boundary = self.last_reset(now)
        if boundary > self.counted_from:
            self.counted_from = boundary
            self.started_today = 0

    def delay(self, now: float) -> float:
        r = self.rates
        in_burst = r.burst_window > 0 and self.next_reset(now) - now <= r.burst_window
        return max(r.min_delay, r.burst_delay if in_burst else r.sustained_delay)

    def blocker(self, now: float) -> tuple[str, float] | None:
        """(why the pool cannot start a run now, when to look again), or None."""
        if self.backoff_until > now:
            return f"backoff until {hhmm(self.backoff_until)} UTC", self.backoff_until
        self._roll(now)
        limit = self.rates.daily_limit
        if limit is not None and self.started_today >= limit:
            reset = self.next_reset(now)
            return f"daily limit {self.started_today}/{limit} until {hhmm(reset)} UTC", reset
        if self.last_start is not None:
            ready = self.last_start + self.delay(now)
            if now < ready:
                return f"rate delay {math.ceil(ready - now)}s", ready
        return None

    def started(self, now: float) -> None:
        self._roll(now)
        self.started_today += 1
        self.last_start = now

    def back_off(self, until: float, reason: str) -> None:
        if until > self.backoff_until:
            self.backoff_until, self.backoff_reason = until, reason

    def record_failure(self, now: float, started_at: float | None) -> bool:
        """Count a failed run; True when this trips the breaker (the pool is backed off)."""
        if started_at is None or now - started_at > self.breaker.fast_failure_s:
            return False
        self.fast_failures.append(now)
        while self.fast_failures and now - self.fast_failures[0] > self.breaker.window_s:
            self.fast_failures.popleft()
        if len(self.fast_failures) >= self.breaker.failures:
            self.fast_failures.clear()
            until = now + self.breaker.backoff_minutes * 60
            self.back_off(
                until,
                f"{self.breaker.failures} runs failed within {self.breaker.fast_failure_s:g}s of their start",
            )
            return True
        return False

    def record_success(self) -> None:
        self.fast_failures.clear()
