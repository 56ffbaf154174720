"""Allowances: what an agent may still use today, checked before every dispatch.

Checked in the seed's order: the model allowlist, the daily job limit, concurrent jobs,
the daily token limit, the daily cost limit; the first refusal wins. Usage is counted per
agent and UTC day (the day rolls over at UTC midnight, so limits reset then); a job
counts when its run is dispatched, tokens and cost when it ends. Once a limit is 80% used
a warning is given, once fully used an "exceeded" notice, each once a day.

Pure: the caller reads and stores the usage (tasks.py) and passes `now`.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from .config import Allowance

WARN_AT = 0.8


@dataclass(frozen=True)
class Usage:
    jobs: int = 0
    tokens: int = 0
    cost_usd: float = 0.0


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    reason: str = ""
    retry_at: float | None = None  # when it may be allowed again (the next UTC midnight)


def utc_day(now: float) -> str:
    return dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%d")


def next_reset(now: float) -> float:
    """The next UTC midnight after `now`."""
    day = dt.datetime.fromtimestamp(now, dt.UTC).date() + dt.timedelta(days=1)
    return dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp()


def check(
    agent: str, limits: Allowance, used: Usage, running: int, model: str | None, now: float
) -> Verdict:
    """Whether `agent` may start one more job now (`model`: the model it would run, its
    default resolved)."""
    allow = limits.model_allowlist
    if allow is not None and (model or "") not in allow:
        named = repr(model) if model else "its default model"
        return Verdict(False, f"{named} is not allowed for {agent} (allowed: {', '.join(allow)})")
    reset = next_reset(now)
    if limits.daily_job_limit is not None and used.jobs >= limits.daily_job_limit:
        return Verdict(
            False,
            f"{agent} used its daily job limit ({limits.daily_job_limit}); resets 00:00 UTC",
            reset,
        )
    if limits.concurrent_jobs is not None and running >= limits.concurrent_jobs:
        return Verdict(False, f"{agent} runs {running} of {limits.concurrent_jobs} concurrent jobs")
    if limits.daily_token_limit is not None and used.tokens >= limits.daily_token_limit:
        return Verdict(
            False,
            f"{agent} used its daily token limit ({limits.daily_token_limit}); resets 00:00 UTC",
            reset,
        )
    if limits.daily_cost_limit is not None and used.cost_usd >= limits.daily_cost_limit:
        return Verdict(
            False,
            f"{agent} used its daily cost limit (${limits.daily_cost_limit:g}); resets 00:00 UTC",
            reset,
        )
    return Verdict(True)


def thresholds(limits: Allowance, used: Usage) -> list[tuple[str, str, float]]:
    """(limit name, "warning" | "exceeded", fraction used) for each daily limit at 80% or
    more."""
    out = []
    for name, value, limit in (
        ("daily_job_limit", used.jobs, limits.daily_job_limit),
        ("daily_token_limit", used.tokens, limits.daily_token_limit),
        ("daily_cost_limit", used.cost_usd, limits.daily_cost_limit),
    ):
        if not limit:
            continue
        fraction = value / limit
        if fraction >= 1:
            out.append((name, "exceeded", fraction))
        elif fraction >= WARN_AT:
            out.append((name, "warning", fraction))
    return out
