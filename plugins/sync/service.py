"""The sync service: a durable outbox of finished runs and tasks, drained to a fleet API.

Catching up: a run's or a task's end (the runner's and the agentic service's messages)
wakes the catch-up, which asks the services' queries (`FinishedRuns`, `FinishedTasks`)
for everything that ended since its watermark and queues it by fingerprint; at startup it
does the same, so a hub killed between a state change and the outbox write loses nothing
and queues nothing twice.

Draining, head of line: the oldest batch is POSTed with its Idempotency-Key (the same on
every retry). Sent: the ledger (an audit record) and `last_push_at`. A retryable failure
(a 5xx, 408, 429, no answer) waits `1 s * 2^(attempts-1)`, capped at 30 s (429: its
Retry-After), up to `max_attempts` tries; then, or at once for any other 4xx, the batch
is dropped with an audit record (direction, agent, attempts, reason, payload size, items,
time). A new record wakes the drainer at once. An attempt cut off by shutdown is not
counted: the batch stays at the head, to be sent again under the same key.

The bearer token is read from the environment variable the manifest names, when a
request is made; it is never logged, stored, or put in an error.
"""

from __future__ import annotations

import json
import logging

import anyio

from fleetbus.bus import Refused
from fleetbus.bus.hub import Hub
from fleetbus.plugins.runner.clock import clock_for

from .config import MAX_ATTEMPTS_ENV, SYNC
from .http import FleetAPI, Outcome
from .models import AuditRecord, Pulled, PullInput, Records, RecordsQuery, SyncStatus
from .outbox import Batch, Outbox
from .records import Item, of_run, of_task

log = logging.getLogger("fleetbus.sync")

MIN_BACKOFF = 1.0
MAX_BACKOFF = 30.0
MAX_RETRY_AFTER = 3600.0  # a Retry-After longer than this is taken as an hour
IDLE = "sync is idle: no sync.url is configured (set it in the manifest to report finished work)"


def backoff(attempts: int) -> float:
    """Seconds before try `attempts + 1`: 1, 2, 4, ... capped at 30."""
    if attempts <= 0:
        return 0.0
    return float(min(MAX_BACKOFF, MIN_BACKOFF * 2 ** min(attempts - 1, 10)))


class Sync:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.spec = hub.config[SYNC]
        self.outbox = Outbox(hub.store)
        self.clock = clock_for(hub.wall_clock)
        self.catch_up_wanted = anyio.Event()
        self.work = anyio.Event()  # a record was queued, or a push was asked for
        self.api: FleetAPI | None = None
        self.sending = anyio.Lock()  # one attempt at a time: the drainer's or a push's
        self.attempts = 0  # attempts made by this hub
        self.settling = anyio.Lock()
        self.ended_batches: list[tuple[Batch, str, AuditRecord]] = []
        self.max_attempts = self.spec.max_attempts
        override = hub.env.get(MAX_ATTEMPTS_ENV, "").strip()
        if override:
            try:
                self.max_attempts = max(1, int(override))
            except ValueError:
                log.warning("%s=%r is not a whole number; using %d", MAX_ATTEMPTS_ENV,
                            override[:20], self.max_attempts)  # fmt: skip

    @property
    def configured(self) -> bool:
        return self.spec.url is not None

    def token(self) -> str | None:
        return self.hub.env.get(self.spec.token_env) or None

    # -- lifecycle ---------------------------------------------------------------------------
    async def startup(self) -> None:
        if not self.configured:
            log.info(IDLE)
            return
        assert self.spec.url is not None
        self.api = FleetAPI(self.spec.url, self.token(), timeout=self.spec.timeout_s)
        tg = self.hub.task_group
        tg.start_soon(self.catch_up_loop, name="sync catch-up")
        tg.start_soon(self.drain_loop, name="sync drainer")

    async def shutdown(self) -> None:
        if self.api is not None:
            with anyio.CancelScope(shield=True):
                await self.api.aclose()

    def ended(self) -> None:
        """A run or task ended: catch up (many ends in a burst are one catch-up)."""
        if self.configured:
            self.catch_up_wanted.set()

    # -- catching up -------------------------------------------------------------------------
    async def catch_up_loop(self) -> None:
        while True:
            try:
                await self.catch_up()
            except Exception:
                log.exception("sync could not catch up; it tries again at the next end")
            await self.catch_up_wanted.wait()
            self.catch_up_wanted = anyio.Event()

    async def catch_up(self) -> None:
        """Queue every run and task that ended since the watermarks."""
        from fleetbus.plugins.agentic.models import FinishedTasks
        from fleetbus.plugins.runner.models import FinishedRuns

        for key, make, of in (
            ("watermark_runs", FinishedRuns, of_run),
            ("watermark_tasks", FinishedTasks, of_task),
        ):
            since = float(await self.outbox.get_state(key) or 0)
            while True:
                found = await self.hub.bus.query(make(since=since, limit=1000))
                if not found:
                    break
                items: list[Item] = [of(x) for x in found]
                if await self.outbox.add(items, self.clock.now()):
                    self.work.set()
                newest = max(x.ended_at or since for x in found)
                # ends at the same instant as the watermark are asked again next time:
                # the fingerprints keep them from being queued twice
                await self.outbox.put_state(key, repr(newest))
                if len(found) < 1000 or newest <= since:
                    break
                since = newest

    # -- draining ----------------------------------------------------------------------------
    async def drain_loop(self) -> None:
        line: list[Batch] = []
        seen = -1  # the attempt count `line` was read at: a push in between makes it stale
        while True:
            if not line or seen != self.attempts:
                line = await self.outbox.line(self.spec.batch_size, self.clock.now())
                seen = self.attempts
            if not line:
                await self.work.wait()
                self.work = anyio.Event()
                continue
            wait = line[0].next_attempt - self.clock.now()
            if wait > 0:
                with anyio.move_on_after(wait):
                    await self.clock.sleep_until(line[0].next_attempt)
                line = []
                continue
            async with self.sending:
                if seen != self.attempts:
                    continue  # a push moved the line meanwhile: read it again
                await self.pump(line)
                line = []
                seen = self.attempts

    async def pump(self, line: list[Batch]) -> None:
        """Send the formed batches of `line`, one after the other, while each sent one is
        recorded (its commit overlaps the next POST: the store records them in order);
        stops at the first that must wait."""
        assert self.api is not None
        retry: tuple[Batch, Outcome] | None = None
        async with anyio.create_task_group() as tg:
            for batch in line:
                if batch.next_attempt > self.clock.now():
                    break
                outcome = await self.post(batch)
                self.attempts += 1
                if outcome.kind == "retry" and batch.attempts + 1 < self.max_attempts:
                    retry = (batch, outcome)
                    break
                tg.start_soon(self.record_end, batch, outcome)
        if retry is not None:  # recorded after every earlier batch's end
            await self.record_end(*retry)

    async def settle(self, batch: Batch, state: str, audit: AuditRecord) -> None:
        """Record a batch's end; ends waiting meanwhile go in the same commit (whoever holds
        the lock writes everything queued, so on return this end is written)."""
        self.ended_batches.append((batch, state, audit))
        async with self.settling:
            ended, self.ended_batches = self.ended_batches, []
            if ended:
                await self.outbox.settle(ended)

    async def record_end(self, batch: Batch, outcome: Outcome) -> None:
        """Record what came of one attempt at `batch`."""
        now = self.clock.now()
        tries = batch.attempts + 1
        if outcome.kind == "retry" and tries < self.max_attempts:
            delay = backoff(tries)
            if outcome.retry_after is not None:  # the API's word, within reason
                delay = min(max(outcome.retry_after, 0.0), MAX_RETRY_AFTER)
            await self.outbox.retry_later(batch, tries, now + delay, outcome.reason)
            return
        state, reason = "sent", outcome.reason
        if outcome.kind == "drop":
            state = "dropped"
        elif outcome.kind == "retry":
            state, reason = "dropped", f"gave up after {tries} attempts; last: {outcome.reason}"
        entry = AuditRecord(direction="push", outcome=state, agent_id=self.spec.agent,
                            batch=batch.id, attempts=tries, reason=reason,
                            payload_bytes=len(batch.body), items=batch.items, at=now)  # fmt: skip
        await self.settle(batch, state, entry)
        if state == "dropped":
            log.warning("sync dropped batch %s (%d records): %s", batch.id, batch.items, reason)

    async def attempt(self, batch: Batch) -> Outcome:
        """POST the batch once and record what came of it."""
        assert self.api is not None
        outcome = await self.post(batch)
        self.attempts += 1
        await self.record_end(batch, outcome)
        return outcome

    async def post(self, batch: Batch) -> Outcome:
        """POST `batch`, unless the token it needs is missing: then nothing is sent and the
        batch waits (a misconfigured hub must not have the API refuse, and drop, its work)."""
        assert self.api is not None
        if self.token() is None:
            return Outcome(
                "retry",
                None,
                f"the environment variable {self.spec.token_env} (sync.token_env) is not set "
                "in the hub's environment: set it, then restart the hub with `fleetbus stop`",
            )
        return await self.api.push_encoded(self.spec.agent, self.spec.node, batch.body, batch.id)

    # -- actions -----------------------------------------------------------------------------
    def need_url(self, action: str) -> None:
        if not self.configured:
            raise Refused(f"{action}: {IDLE}")

    async def push_now(self) -> SyncStatus:
        """Catch up, then try every batch now (backoff waits skipped) until the line is
        empty or a batch fails."""
        self.need_url("sync.push")
        await self.catch_up()
        while True:
            async with self.sending:
                batch = await self.outbox.head(self.spec.batch_size, self.clock.now())
                if batch is None:
                    break
                outcome = await self.attempt(batch)
            if outcome.kind == "retry":
                break
        self.work.set()
        return await self.status()

    async def pull(self, req: PullInput) -> Pulled:
        self.need_url("sync.pull")
        assert self.api is not None
        outcome, body = await self.api.pull(self.spec.agent, req.since)
        now = self.clock.now()
        size = len(json.dumps(body)) if body is not None else 0
        kind = "pulled" if outcome.kind == "sent" else "failed"
        await self.outbox.audit(AuditRecord(direction="pull", outcome=kind,
                                            agent_id=self.spec.agent, batch=None, attempts=1,
                                            reason=outcome.reason, payload_bytes=size,
                                            items=1 if body is not None else 0, at=now))  # fmt: skip
        if outcome.kind == "sent":
            await self.outbox.cache_context(self.spec.agent, req.since, body, now)
            return Pulled(fresh=True, fetched_at=now, reason="", context=body)
        cached = await self.outbox.cached_context(self.spec.agent)
        if cached is None:
            return Pulled(fresh=False, fetched_at=None, reason=outcome.reason, context=None)
        return Pulled(fresh=False, fetched_at=cached[1], reason=outcome.reason, context=cached[0])

    async def status(self) -> SyncStatus:
        found = await self.outbox.summary()
        counts, state, head = found["counts"], found["state"], found["head"]
        oldest = found["oldest"]
        now = self.clock.now()
        queued = counts.get("queued", 0)
        if not self.configured:
            note = IDLE
        elif queued == 0 and counts.get("dropped", 0):
            note = (
                f"nothing is waiting; {counts['dropped']} records were dropped "
                "(sync.records says why)"
            )
        elif queued == 0:
            note = "everything finished has been sent"
        elif head is not None and head[1] > now:
            note = f"waiting to try again (attempt {head[0] + 1} of {self.max_attempts})"
        else:
            note = "sending"
        return SyncStatus(
            configured=self.configured,
            url=self.spec.url,
            note=note,
            queued=queued,
            oldest_age_s=round(now - oldest, 3) if oldest is not None else None,
            sent=counts.get("sent", 0),
            dropped=counts.get("dropped", 0),
            attempts=head[0] if head else 0,
            next_attempt_at=head[1] if head and head[1] > now else None,
            last_push_at=float(state["last_push_at"]) if state.get("last_push_at") else None,
            last_error=state.get("last_error", ""),
        )

    async def records(self, req: RecordsQuery) -> Records:
        rows = await self.outbox.records(req.limit)
        return Records(records=[AuditRecord.model_validate(r) for r in rows])
