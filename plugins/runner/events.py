"""What the runner announces: bus messages and the channel events people read.

Each function returns `(message, context)` pairs; the caller publishes them (after the
commit of the write they report, with `tx.publish`, or on the bus). A run's messages carry
its origin, so a channel event finds the session that asked for the run; fleet-wide news
(queue drained, a pool backing off) carries none.

Builds values only: never touches the database, the bus or a process.
"""

from __future__ import annotations

from fleetbus.bus import ChannelPush, Context, Message

from . import questions
from .limits import hhmm
from .models import QueueDrained, RateLimitDetected, RunCompleted, RunQueued, RunStarted
from .runs import Ending, RunRef, duration_text

STATUS_CHANNEL = "agent.status"
FLEET_CHANNEL = "fleet"
Announcement = list[tuple[Message, Context]]


def context_of(run: RunRef) -> Context:
    """The context of messages about `run`: caused by it, for whoever asked for it."""
    return Context(caller=f"run:{run.run_id}", origin=run.origin)


def fleet_context() -> Context:
    return Context(caller="runner")  # fleet-wide: no session's origin


def status_event(run: RunRef, status: str, content: str, **extra: str) -> ChannelPush:
    """An `agent.status` channel event about `run`."""
    meta = {
        "channel": STATUS_CHANNEL,
        "run_id": run.run_id,
        "workspace": run.workspace,
        "agent": run.agent,
        "status": status,
        **extra,
    }
    if run.model:
        meta["model"] = run.model
    return ChannelPush(channel=STATUS_CHANNEL, content=content, meta=meta)


def queued(run: RunRef, reason: str, position: int | None, ctx: Context) -> Announcement:
    """A run waits in the queue (announced in the context of the dispatch that queued it)."""
    message = RunQueued(
        run_id=run.run_id,
        workspace=run.workspace,
        agent=run.agent,
        model=run.model,
        reason=reason,
        queue_position=position,
    )
    return [(message, ctx)]


def started(run: RunRef, pid: int) -> Announcement:
    ctx = context_of(run)
    message = RunStarted(
        run_id=run.run_id, workspace=run.workspace, agent=run.agent, model=run.model, pid=pid
    )
    content = f"{run.agent} started {run.workspace} (run {run.run_id})"
    return [(message, ctx), (status_event(run, "running", content), ctx)]


def ended(run: RunRef, end: Ending, started_at: float | None) -> Announcement:
    """The run_completed message and the channel event saying how a run ended (one that
    never started, `started_at` None, was dropped)."""
    code = end.exit_code
    duration = end.ended_at - started_at if started_at else None
    completed = RunCompleted(
        run_id=run.run_id,
        workspace=run.workspace,
        agent=run.agent,
        model=run.model,
        status=end.status,
        exit_code=code,
        duration_s=round(duration, 3) if duration is not None else None,
        reason=end.reason,
        usage=end.usage,
        question=end.question,
    )
    extra = {"exit_code": str(code)} if code is not None else {}
    if duration is not None:
        extra["duration_s"] = f"{duration:.1f}"
    if end.status == "blocked" and end.question is not None:
        content = f"{run.agent} is blocked in {run.workspace}: {questions.snippet(end.question)}"
    elif duration is None:
        content = f"{run.agent} dropped {run.workspace}: {end.status} ({end.reason})"
    else:
        exit_text = f", exit {code}" if code is not None else ""
        why = f" ({end.reason})" if end.reason and end.reason != f"exit {code}" else ""
        took = duration_text(duration)
        content = f"{run.agent} finished {run.workspace}: {end.status} in {took}{exit_text}{why}"
    ctx = context_of(run)
    return [(completed, ctx), (status_event(run, end.status, content, **extra), ctx)]


def queue_drained(started: int) -> Announcement:
    ctx = fleet_context()
    event = ChannelPush(
        channel=FLEET_CHANNEL,
        content="queue drained: every queued run has started",
        meta={"channel": FLEET_CHANNEL, "event": "queue_drained"},
    )
    return [(QueueDrained(started=started), ctx), (event, ctx)]


def rate_limited(pool: str, until: float, reason: str) -> Announcement:
    ctx = fleet_context()
    event = ChannelPush(
        channel=FLEET_CHANNEL,
        content=f"{pool} backs off until {hhmm(until)} UTC: {reason}",
        meta={"channel": FLEET_CHANNEL, "event": "rate_limit", "pool": pool},
    )
    return [(RateLimitDetected(pool=pool, until=until, reason=reason), ctx), (event, ctx)]
