"""The Runner: one hub's runner, wired from its rooms; the action handlers live here.

Each handler validates its input (validation.py) and delegates: the session policy
decides what a new prompt does (sessions.py), the queue holds every statement on the
runs (queue.py), the scheduler starts what fits (scheduler.py), the supervisor owns the
processes (supervisor.py), events.py says what is announced and status.py what is shown.
The path of a run reads in that order: dispatch -> queue -> start -> exit -> settle ->
message. This module writes no SQL and never touches a process itself.

Decisions made here where the design is silent: a followup to a workspace where nothing
has run starts without context, and its dispatch result says so in `reason` ("no earlier
run in this workspace: started without context"), the field a caller already reads, while
`runner.status` shows no `previous_run_id` for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import anyio.to_thread

from fleetbus.bus import Context, InvalidInput, Refused

from . import events
from .clock import clock_for, wait_until
from .config import AGENTS, DISPATCH
from .followup import note_no_context
from .launch import Launcher
from .models import (
    DispatchFrozen,
    DispatchInput,
    DispatchResult,
    FinishedRuns,
    KillInput,
    KillResult,
    RunInfo,
    StateResult,
    StatusInput,
    StatusResult,
    WorkspaceInfo,
    WorkspaceQuery,
)
from .queue import Filter, RunQueue
from .runs import ActiveRun, Ending, RunRef
from .scheduler import Scheduler
from .sessions import Decision, Enqueue, Merge, Prompt, Refuse, SessionPolicy, Start, Waiting
from .state import RunnerState
from .status import run_info, runner_status, workspaces
from .supervisor import Supervisor
from .validation import agent_spec, check_and_create, installed, new_row, path_of, workspace_name

if TYPE_CHECKING:
    from fleetbus.bus.hub import Hub


class Runner:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        dispatch = self.dispatch_spec = hub.config[DISPATCH]
        self.root = dispatch.resolved_workspace_root(hub.home.root)
        self.runs_dir = hub.home.root / "runs"
        self.clock = clock_for(hub.wall_clock)
        frozen = dispatch.start_frozen or hub.env.get("FLEETBUS_FROZEN", "") in (
            "1",
            "true",
            "yes",
        )
        agents = hub.config[AGENTS]
        self.state = RunnerState(dict(agents), dispatch, frozen)
        self.dispatch_gate = anyio.Lock()
        # workspaces and idempotency keys of started runs whose insert is committing
        self.inflight: dict[str, anyio.Event] = {}
        self.queue = RunQueue(hub.store)
        self.policy = SessionPolicy(dispatch.session)
        launcher = Launcher(
            self.queue,
            self.state.agents,
            self.root,
            hub.env,
            {"FLEETBUS_SOCKET": str(hub.socket_path), "FLEETBUS_HOME": str(hub.home.root)},
        )
        self.supervisor = Supervisor(
            self.state,
            self.queue,
            launcher,
            self.clock,
            kill_grace=dispatch.kill_grace,
            root=self.root,
            runs_dir=self.runs_dir,
            publish=hub.bus.publish,
            task_group=lambda: hub.task_group,
        )
        self.scheduler = Scheduler(
            self.state,
            self.queue,
            self.supervisor,
            self.clock,
            drain_interval=dispatch.drain_interval,
            runs_dir=self.runs_dir,
            publish=hub.bus.publish,
        )

    @property
    def active(self) -> dict[str, ActiveRun]:
        return self.state.active

    @property
    def queued_total(self) -> int:
        return self.state.queued_total

    def is_busy(self) -> bool:
        return self.state.is_busy()

    # -- startup: hydrate from the store -----------------------------------------------------
    async def startup(self) -> None:
        self.runs_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.runs_dir.chmod(0o700)  # private like the home (older versions made it 0755)
        self.root.mkdir(parents=True, exist_ok=True)
        now = self.clock.now()
        snapshot = await self.queue.snapshot()
        for row in snapshot.pools:
            pool = self.state.pools.get(row["pool"])
            if pool is not None:
                pool.back_off(row["backoff_until"], row["reason"])
        for name, pool in self.state.pools.items():
            since = pool.last_reset(now)
            pool.started_today, pool.last_start = await self.queue.starts_since(name, since)
            pool.counted_from = since
        for row in snapshot.queued_counts:
            self.state.add_queued(row["agent"], row["workspace"], row["n"])
        for row in snapshot.running:
            await self.supervisor.adopt_or_settle(row)
        async with self.state.lock:  # counted once, adoptions done; then kept (RunCounts)
            self.state.counts.load((await self.queue.listing(Filter(), 0))[0])
        self.scheduler.announce_drained = self.state.queued_total > 0
        tg = self.hub.task_group
        tg.start_soon(self.scheduler.drain_loop, name="runner drain loop")
        tg.start_soon(self.supervisor.settle_loop, self.scheduler.drain, name="runner settle")
        self.scheduler.wake()

    # -- dispatch ----------------------------------------------------------------------------
    async def dispatch(self, req: DispatchInput, ctx: Context) -> DispatchResult:
        # checking and creating the workspace touch the filesystem: in a worker thread,
        # never on the loop that answers every other caller
        checked = await anyio.to_thread.run_sync(
            check_and_create,
            req,
            self.state.agents,
            self.dispatch_spec,
            self.root,
            path_of(self.hub.env),
        )
        name, model = checked.workspace, checked.model
        mode = req.session_mode or self.policy.spec.mode
        prompt = Prompt(
            req.agent,
            model,
            len(req.prompt.encode()),
            mode,
            req.idempotency_key is not None,
            checked.prompt_limit,
        )
        # dispatches queue for the state lock one at a time behind this gate, so the settle
        # of ended runs (which frees slots) waits for one dispatch at most, not hundreds
        async with self.dispatch_gate, self.state.lock:
            # a run of this workspace or key whose insert is still committing: decide with
            # it in the store (the session policy and the key lookup read the store)
            for pending in (name, f"key:{req.idempotency_key}"):
                if pending in self.inflight:
                    await self.inflight[pending].wait()
            if req.idempotency_key is not None:
                existing = await self.queue.by_idempotency_key(req.idempotency_key)
                if existing is not None:
                    return await self._answer(existing)
            now = self.clock.now()
            busy = self.state.session_busy(name)
            if mode == "interrupt":
                await self._interrupt(name)
            # a followup learns here whether anything ran before it (for its result); the
            # run it continues is looked up again when it starts
            previous = await self.queue.previous_run(name) if mode == "followup" else None
            startable = self.scheduler.startable(req.agent, model, now)
            waiting = []
            if not (startable and not busy) and self.state.queued_by_workspace[name]:
                waiting = [
                    Waiting.of(r) for r in await self.queue.waiting_in(name, self.policy.window)
                ]
            decision = self.policy.admit(
                prompt, name, busy=busy, waiting=waiting, startable=startable, now=now
            )
            row = new_row(req, ctx, checked, mode, now)
            if not isinstance(decision, Start):
                return await self._not_now(
                    decision, row, req, ctx, mode, previous, waiting, busy, now
                )
            # nothing waits ahead: it starts now. Its slot is held from here, so the next
            # decision sees it; its insert commits after the lock is let go, together with
            # other dispatches' (group commit), and its process is spawned after that
            row.update(
                status="running",
                reason="",
                started_at=now,
                attempt=1,
                run_dir=str(self.runs_dir / row["id"]),
                previous_run=previous,
            )
            self.state.reserve(row["agent"], row["model"], name)
            self.supervisor.expect(row["id"])
            committed = anyio.Event()
            keys = [name, f"key:{req.idempotency_key}"] if req.idempotency_key else [name]
            for key in keys:
                self.inflight[key] = committed
        try:
            row["seq"] = await self.queue.insert(row)
        except BaseException:
            self.state.unreserve(row["agent"], row["model"], name)
            self.supervisor.unexpect(row["id"])
            raise
        finally:
            for key in keys:
                if self.inflight.get(key) is committed:
                    del self.inflight[key]
            committed.set()
        self.state.counts.added("running")
        self.state.pools[row["agent"]].started(now)
        # answered once spawned ("running" means running), without holding the lock
        await self.supervisor.launch_expected(row)
        return note_no_context(await self._answer(row), mode, previous, 0)

    async def _not_now(
        self,
        decision: Decision,
        row: dict[str, Any],
        req: DispatchInput,
        ctx: Context,
        mode: str,
        previous: str | None,
        waiting: list[Waiting],
        busy: bool,
        now: float,
    ) -> DispatchResult:
        """A dispatch that does not start at once: merged into a waiting run, refused, or
        queued (the caller holds the state lock)."""
        name = row["workspace"]
        if isinstance(decision, Merge):
            merged = await self.queue.merge(
                decision.into, req.prompt, row["priority"], decision.not_before, mode
            )
            if merged is not None:
                result = await self._answer(merged)
                result.reason = (
                    f"merged into the waiting run {decision.into} (debounce); {result.reason}"
                )
                return note_no_context(result, mode, previous, len(waiting) - 1)
            # the run left the queue meanwhile: the prompt waits on its own
            decision = self.policy.wait_or_refuse(name, busy=busy, waiting=waiting, now=now)
        if isinstance(decision, Refuse):
            row.update(status="cancelled", reason=decision.reason, ended_at=now)
            await self.queue.insert(row)
            self.state.counts.added("cancelled")
            return DispatchResult(run_id=row["id"], status="cancelled", reason=decision.answer)
        assert isinstance(decision, Enqueue)
        return await self._enqueue(row, decision, ctx, mode, previous, len(waiting))

    async def _enqueue(
        self,
        row: dict[str, Any],
        decision: Enqueue,
        ctx: Context,
        mode: str,
        previous: str | None,
        ahead: int,
    ) -> DispatchResult:
        """Queue a new run (after dropping the oldest waiting one when so decided), drain,
        and announce it when it still waits."""
        if decision.drop_oldest is not None:
            await self._cancel_queued([decision.drop_oldest], decision.drop_reason)
        row.update(status="queued", reason=decision.reason, not_before=decision.not_before)
        row["seq"] = await self.queue.insert(row)
        self.state.add_queued(row["agent"], row["workspace"])
        self.state.counts.added("queued")
        await self.scheduler.drain()
        result = note_no_context(await self._answer(row), mode, previous, ahead)
        if result.status == "queued":
            self.scheduler.announce_drained = True  # news once this one starts
            for message, context in events.queued(
                RunRef.of(row), result.reason, result.queue_position, ctx
            ):
                self.hub.bus.publish(message, context)
        return result

    async def _answer(self, row: dict[str, Any]) -> DispatchResult:
        """What dispatch answers about `row`: its status, why it waits and its place."""
        started = row["id"] in self.state.active or row["id"] in self.supervisor.starting
        status = "running" if started else row["status"]
        if status != "queued":
            reason = row["reason"] if status != "running" else ""
            return DispatchResult.model_validate(
                {"run_id": row["id"], "status": status, "reason": reason}
            )
        return DispatchResult(
            run_id=row["id"],
            status="queued",
            reason=self.scheduler.why_queued(row),
            queue_position=await self.queue.position(row["priority"], row["seq"]),
        )

    async def _interrupt(self, workspace: str) -> None:
        """Cancel the workspace's active runs and its waiting prompts (a new one replaces them)."""
        waiting = await self.queue.waiting_in(workspace, self.policy.window)
        await self._cancel_queued(
            [r["id"] for r in waiting], "cancelled: interrupted by a newer prompt"
        )
        await self.supervisor.starts_done()  # a run being spawned is interrupted too
        for run in [a for a in self.state.active.values() if a.workspace == workspace]:
            self.supervisor.terminate(run, "cancelled", "interrupted by a newer prompt")

    async def _cancel_queued(self, ids: list[str], reason: str) -> int:
        """Cancel those of `ids` still queued and announce each; how many were."""
        now = self.clock.now()
        rows = await self.queue.cancel_queued(ids, reason, now)
        self.state.counts.moved("queued", "cancelled", len(rows))
        for r in rows:
            self.state.remove_queued(r["agent"], r["workspace"])
            end = Ending("cancelled", reason, None, now)
            for message, ctx in events.ended(RunRef.of(r), end, None):
                self.hub.bus.publish(message, ctx)
        return len(rows)

    # -- control -----------------------------------------------------------------------------
    async def unfreeze(self) -> StateResult:
        self.set_frozen(False)
        return await self.drain_now()

    async def freeze(self) -> StateResult:
        self.set_frozen(True)
        return self.state_result()

    def set_frozen(self, frozen: bool) -> None:
        if self.state.frozen != frozen:
            self.state.frozen = frozen
            self.hub.bus.publish(DispatchFrozen(frozen=frozen), events.fleet_context())

    async def drain_now(self) -> StateResult:
        async with self.state.lock:
            await self.scheduler.drain()
        return self.state_result()

    def state_result(self) -> StateResult:
        state = self.state
        return StateResult(
            frozen=state.frozen, running=state.lanes.running_total, queued=state.queued_total
        )

    async def kill(self, req: KillInput) -> KillResult:
        everything = req.run_id is None and req.agent is None and req.workspace is None
        if req.agent is not None:
            agent_spec(self.state.agents, req.agent)
        workspace = workspace_name(req.workspace, self.root, "runner.kill")
        async with self.state.lock:
            if everything:
                self.set_frozen(True)
            await self.supervisor.starts_done()  # runs being spawned are killed too
            targets = [
                a
                for a in self.state.active.values()
                if everything
                or a.run_id == req.run_id
                or (req.agent is not None and a.agent == req.agent)
                or (workspace is not None and a.workspace == workspace)
            ]
            matching = None if everything else Filter(req.run_id, workspace, None, req.agent)
            queued = await self.queue.queued_ids(matching)
            if req.run_id is not None and not targets and not queued:
                known = await self.queue.status_of(req.run_id)
                if known is None:
                    raise InvalidInput.from_errors(
                        "runner.kill", [{"field": "run_id", "message": f"no run {req.run_id!r}"}]
                    )
                raise Refused(f"run {req.run_id} is not running or queued (it is {known})")
            cancelled = await self._cancel_queued(queued, "cancelled by runner.kill")
            for run in targets:
                self.supervisor.terminate(run, "cancelled", "killed by runner.kill")
        deadline = self.clock.now() + self.dispatch_spec.kill_grace + 10
        for run in targets:
            if not await wait_until(self.clock, run.done, deadline):
                break
        return KillResult(killed=len(targets), cancelled=cancelled, frozen=self.state.frozen)

    # -- reads -------------------------------------------------------------------------------
    async def status(self, req: StatusInput) -> StatusResult:
        workspace = workspace_name(req.workspace, self.root, "runner.status")
        return await runner_status(
            self.queue,
            self.state,
            Filter(req.run_id, workspace, req.status, req.agent),
            req.limit,
            why_queued=self.scheduler.why_queued,
            now=self.clock.now(),
            installed={
                a: installed(s, self.hub.env, self.root) for a, s in self.state.agents.items()
            },
        )

    async def finished(self, q: FinishedRuns) -> list[RunInfo]:
        rows = await self.queue.finished_since(q.since, max(1, min(q.limit, 10_000)))
        return [run_info(r, r["reason"], r["pid"], r["question"]) for r in rows]

    async def workspaces(self, q: WorkspaceQuery) -> list[WorkspaceInfo]:
        name = workspace_name(q.name, self.root, "WorkspaceQuery", "name")
        return await workspaces(self.queue, self.root, name, q.status)
