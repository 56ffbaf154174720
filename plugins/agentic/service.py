"""The agentic service: tasks in git workspaces, handed to the runner and followed to
their end.

A task is dispatched once (validated, its workspace prepared, its row written) and then
attempted: routed to an agent, checked against its allowance and sent to `runner.dispatch`
with the context of the call that made it, so the runner's channel events reach the same
session. The runner's messages tell it when a run starts and ends; a sweep every
`agentic.sweep_s` (and at startup) settles runs whose end it did not hear (a dropped
message, a restart) and starts the retries that are due, so nothing depends on a message
arriving.

Task states: `pending` (waiting for an agent, an allowance, a retry's time, or for its run
to start in the runner's queue), `running`, `blocked` (a question awaits an answer:
`agentic.resume`), and the ends `completed`, `failed` (dead letter: retries exhausted),
`timeout`, `cancelled`. A failed run is retried after `retry_base_s * 2^(n-1)` up to the
task's `max_retries`; a run that failed because its agent reported a usage limit is
dispatched again without counting as a retry (the runner holds it until the pool resets).

The runner never imports this module; this module reads the runner's manifest sections
and calls its actions.
"""

from __future__ import annotations

import json
import logging
import math
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from fleetbus.bus import ChannelPush, Context, InvalidInput, Message, Refused
from fleetbus.bus.errors import BusError
from fleetbus.bus.hub import Hub
from fleetbus.plugins.runner.clock import clock_for
from fleetbus.plugins.runner.config import AGENTS, DISPATCH
from fleetbus.plugins.runner.validation import installed
from fleetbus.plugins.runner.workspaces import BadWorkspace, normalize

from . import allowance, git, prompt, worktree
from .config import AGENTIC, AgentPolicy
from .models import (
    ACTIVE,
    FINAL,
    PRIORITY_RANK,
    RANK_PRIORITY,
    DispatchedTask,
    DispatchFailedNoAgent,
    DispatchFailedQuota,
    DispatchTask,
    QuotaExceeded,
    QuotaWarning,
    Report,
    Reported,
    ResumeTask,
    RetryScheduled,
    TaskClaimed,
    TaskDeadLettered,
    TaskDispatched,
    TaskEnded,
    TaskState,
    UsageRecorded,
)
from .router import Candidate, NoAgent, route
from .tasks import Row, TaskStore
from .views import answer

log = logging.getLogger("fleetbus.agentic")

CHANNEL = "agent.task"


def fault(action: str, field: str, message: str) -> InvalidInput:
    return InvalidInput.from_errors(action, [{"field": field, "message": message}])


def task_event(task: Row, status: str, content: str, **extra: str) -> ChannelPush:
    meta = {
        "channel": CHANNEL,
        "task_id": task["id"],
        "workspace": task["workspace"],
        "branch": task["branch"],
        "agent": task["agent"],
        "status": status,
        **extra,
    }
    return ChannelPush(channel=CHANNEL, content=content, meta=meta)


@dataclass(frozen=True)
class RunEnd:
    """How a run ended, from a `runner.run_completed` message or a `runner.status` row."""

    run_id: str
    status: str
    exit_code: int | None
    reason: str
    usage: dict[str, Any] | None
    question: str | None

    @classmethod
    def of(cls, run: Any) -> RunEnd:
        return cls(run.run_id, run.status, run.exit_code, run.reason, run.usage, run.question)


class Agentic:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.spec = hub.config[AGENTIC]
        self.agents = hub.config[AGENTS]
        self.root = hub.config[DISPATCH].resolved_workspace_root(hub.home.root)
        self.tasks = TaskStore(hub.store)
        self.clock = clock_for(hub.wall_clock)
        self.lock = anyio.Lock()  # task creation: one at a time (idempotency keys)
        self.settling: set[str] = set()  # run ids being settled
        self.wake = anyio.Event()
        self.busy = False  # tasks pending or running: the hub must not exit idle
        self._workspaces: set[str] | None = None  # see task_workspaces
        self._workspaces_lock = anyio.Lock()

    # -- startup and the sweep ---------------------------------------------------------------
    async def startup(self) -> None:
        self.hub.task_group.start_soon(self.sweep_loop, name="agentic sweep")

    async def sweep_loop(self) -> None:
        while True:
            try:
                await self.sweep()
            except Exception:
                log.exception("the agentic sweep failed; trying again at the next one")
            with anyio.move_on_after(self.spec.sweep_s):
                await self.wake.wait()
            self.wake = anyio.Event()

    async def sweep(self) -> None:
        """Settle runs that ended unheard, mark claimed runs, start due retries."""
        active = await self.tasks.with_status(*ACTIVE)
        self.busy = bool(active)
        for task in active:
            if task["run_id"] and task["next_attempt"] is None:
                await self.reconcile(task)
        now = self.clock.now()
        for task in await self.tasks.with_status("pending"):
            due = task["next_attempt"]
            if due is not None and due <= now:
                await self.attempt(task, self.context_of(task))

    async def reconcile(self, task: Row) -> None:
        try:
            found = await self.hub.bus.perform("runner.status", {"run_id": task["run_id"]})
        except BusError:
            return
        if not found.runs:
            return
        run = found.runs[0]
        if run.status == "running" and task["status"] == "pending":
            await self.claimed(task["run_id"])
        elif run.status not in ("queued", "running"):
            await self.settle(RunEnd.of(run))

    def context_of(self, task: Row) -> Context:
        return Context(caller=f"task:{task['id']}", origin=task["origin"] or {})

    # -- the runner's messages ---------------------------------------------------------------
    async def on_runner(self, message: Message) -> None:
        topic = type(message).topic
        run_id = getattr(message, "run_id", None)
        if run_id is None:
            return
        if getattr(message, "workspace", None) not in await self.task_workspaces():
            return  # no task's run: asked of the store for nothing, on a busy runner often
        if topic == "runner.run_started":
            await self.claimed(run_id)
        elif topic == "runner.run_completed":
            await self.settle(RunEnd.of(message))

    async def task_workspaces(self) -> set[str]:
        """The workspaces of every task that may still hear of a run: the tasks not ended
        when first asked, and each task made since (never dropped while the hub runs, so a
        late message still finds its task). A run elsewhere is none of this service's."""
        if self._workspaces is None:
            async with self._workspaces_lock:
                if self._workspaces is None:
                    self._workspaces = await self.tasks.open_workspaces()
        return self._workspaces

    async def claimed(self, run_id: str) -> None:
        task = await self.tasks.by_run(run_id)
        if task is None or task["run_id"] != run_id:
            return
        if await self.tasks.move(task["id"], ["pending"], status="running", reason=""):
            self.publish(TaskClaimed(task_id=task["id"], agent=task["agent"]), task)

    # -- dispatch ----------------------------------------------------------------------------
    async def dispatch(self, req: DispatchTask, ctx: Context) -> DispatchedTask:
        name = "agentic.dispatch"
        text = req.task.strip()
        if not text:
            raise fault(name, "task", "is empty: say what the agent should do")
        for field, value in (
            ("agent", req.agent),
            ("model", req.model),
            ("branch", req.branch),
            ("base", req.base),
            ("repo", req.repo),
            *(("labels", label) for label in req.labels),
        ):
            if value is not None and value.startswith("-"):
                raise fault(name, field, f"{value[:50]!r} starts with '-', read as an option")
        if req.idempotency_key is not None:
            existing = await self.tasks.by_key(req.idempotency_key)
            if existing is not None:
                return answer(existing)
        try:
            source = await anyio.to_thread.run_sync(git.source_of, req.repo)
        except git.GitError as e:
            raise fault(name, "repo", str(e)) from None
        if req.branch is not None:
            try:
                await anyio.to_thread.run_sync(git.validate_branch, req.branch)
            except git.GitError as e:
                raise fault(name, "branch", str(e)) from None
        agent = self.choose(req.agent, req.labels, req.priority)
        base = req.base
        if base is None:
            try:
                base = await anyio.to_thread.run_sync(self.default_base, source)
            except git.GitError as e:
                raise fault(name, "base", str(e)) from None
        task_id = "t-" + secrets.token_hex(6)
        slug = prompt.slug(text, task_id)
        try:
            workspace = normalize(f"{clean(source.org)}/{clean(source.name)}/{slug}", self.root)
        except BadWorkspace as e:
            raise fault(name, "repo", f"gives no usable workspace name: {e}") from None
        branch = req.branch or f"agent/{slug}"
        path = self.root / workspace
        if req.dry_run:
            where = Path(source.location) if source.kind == "local" else None
            language = await anyio.to_thread.run_sync(
                prompt.detect_language, where or Path("/nonexistent")
            )
            text_prompt = self.first_prompt(text, source.location, branch, base, language)
            return DispatchedTask(
                task_id=task_id,
                workspace=workspace,
                branch=branch,
                agent=agent,
                status="pending",
                reason="dry run: nothing was created",
                prompt=text_prompt,
            )
        async with self.lock:
            if req.idempotency_key is not None:
                existing = await self.tasks.by_key(req.idempotency_key)
                if existing is not None:
                    return answer(existing)
            try:
                prepared = await anyio.to_thread.run_sync(
                    git.prepare_workspace, source, path, branch, base
                )
            except git.GitError as e:
                raise Refused(f"{name}: cannot prepare the workspace: {e}") from None
            try:
                local = Path(source.location) if source.kind == "local" else None
                await anyio.to_thread.run_sync(
                    git.exclude, path, [prompt.QUESTION_FILE, prompt.ANSWER_FILE]
                )
                await anyio.to_thread.run_sync(worktree.set_up, local, path, self.spec.setup)
                language = await anyio.to_thread.run_sync(prompt.detect_language, path)
            except (worktree.SetupFailed, git.GitError) as e:
                await self.undo(source, path, branch, prepared)
                raise Refused(f"{name}: {e}; nothing was kept") from None
            row: Row = {
                "id": task_id,
                "repo": source.location,
                "repo_kind": source.kind,
                "task": text,
                "prompt": self.first_prompt(text, source.location, branch, base, language),
                "agent": req.agent or "",  # routed (with loads) when attempted
                "model": req.model,
                "labels": list(req.labels),
                "priority": PRIORITY_RANK[req.priority],
                "status": "pending",
                "reason": "",
                "workspace": workspace,
                "path": str(path),
                "branch": branch,
                "base": base,
                "base_commit": prepared.base_commit,
                "max_retries": (
                    req.max_retries if req.max_retries is not None else self.spec.max_retries
                ),
                "idempotency_key": req.idempotency_key,
                "origin": dict(ctx.origin),
                "created_at": self.clock.now(),
                "next_attempt": None,
            }
            (await self.task_workspaces()).add(workspace)
            await self.tasks.insert(row)
            self.busy = True
        task = await self.tasks.get(task_id)
        assert task is not None
        try:
            return await self.attempt(task, ctx, first=True)
        except BusError:
            await self.tasks.delete(task_id)
            await self.undo(source, path, branch, prepared)
            raise

    def default_base(self, source: git.RepoSource) -> str:
        if source.kind == "local":
            return git.current_branch(Path(source.location))
        return git.remote_head(source.location)

    async def undo(self, source: git.RepoSource, path: Path, branch: str, prepared: Any) -> None:
        """Remove what dispatch created: nothing half-made stays behind."""
        if not prepared.created:
            return
        await anyio.to_thread.run_sync(git.discard_workspace, source, path, branch)

    def first_prompt(
        self, task: str, repo: str, branch: str, base: str, language: prompt.Language
    ) -> str:
        return prompt.build(
            self.spec.prompt_template,
            task=task,
            repo=repo,
            branch=branch,
            base=base,
            language=language,
            constraints=self.spec.constraints,
        )

    # -- routing and allowance ---------------------------------------------------------------
    def policy(self, agent: str) -> AgentPolicy:
        return self.spec.agents.get(agent) or AgentPolicy()

    def max_load(self, agent: str) -> int:
        spec = self.agents[agent]
        chosen = self.policy(agent).max_load
        if chosen is not None:
            return chosen
        return spec.concurrency if isinstance(spec.concurrency, int) else 1

    def candidates(self, loads: dict[str, int] | None = None) -> list[Candidate]:
        loads = loads or {}
        return [
            Candidate(name, frozenset(spec.capabilities), loads.get(name, 0), self.max_load(name))
            for name, spec in sorted(self.agents.items())
            if self.policy(name).route and self.installed(name)
        ]

    def installed(self, agent: str) -> bool:
        """Whether the agent's program is on PATH: an agent that cannot run is not routed to."""
        spec = self.agents.get(agent)
        return spec is not None and installed(spec, self.hub.env, self.root)

    def choose(self, agent: str | None, labels: list[str], priority: str) -> str:
        """The agent named, checked, or the one routing would pick now (loads are counted
        when the task is attempted). Labels no agent has are refused here."""
        name = "agentic.dispatch"
        if agent is not None:
            if agent not in self.agents:
                known = ", ".join(sorted(self.agents)) or "none"
                raise fault(name, "agent", f"unknown agent {agent!r}; known: {known}")
            missing = sorted(set(labels) - set(self.agents[agent].capabilities))
            if missing:
                raise fault(name, "labels", f"agent {agent!r} lacks the capabilities {missing}")
            return agent
        try:
            return route(labels, self.candidates(), critical=priority == "critical")
        except NoAgent as e:  # with no loads counted only `never` can happen
            raise fault(name, "labels", str(e)) from None

    async def route_now(self, task: Row) -> str:
        """Route a task at attempt time, with the loads as they are now."""
        if task["agent"]:
            return str(task["agent"])
        loads = await self.tasks.loads()
        critical = task["priority"] == 0
        return route(task["labels"], self.candidates(loads), critical=critical)

    async def allowed(self, task: Row, agent: str) -> allowance.Verdict:
        limits = self.policy(agent).allowance
        now = self.clock.now()
        used, _ = await self.tasks.usage(agent, allowance.utc_day(now))
        running = await self.tasks.running_count(agent)
        model = task["model"] or self.agents[agent].default_model
        return allowance.check(agent, limits, used, running, model, now)

    # -- attempts ----------------------------------------------------------------------------
    async def attempt(self, task: Row, ctx: Context, *, first: bool = False) -> DispatchedTask:
        """Route, check the allowance and hand the task's next run to the runner. When it
        cannot go now the task stays pending with the reason and a time to try again."""
        now = self.clock.now()
        try:
            agent = await self.route_now(task)
        except NoAgent as e:
            await self.wait(task, str(e), now + self.spec.sweep_s)
            self.publish(DispatchFailedNoAgent(task_id=task["id"], reason=str(e)), task, ctx)
            return answer(await self.fresh(task))
        verdict = await self.allowed(task, agent)
        if not verdict.allowed:
            later = verdict.retry_at or now + self.spec.sweep_s
            await self.wait(task, verdict.reason, later, agent=agent)
            event = DispatchFailedQuota(task_id=task["id"], agent=agent, reason=verdict.reason)
            self.publish(event, task, ctx)
            return answer(await self.fresh(task))
        runs = await self.tasks.runs_of(task["id"])
        attempt = len(runs) + 1
        text = task["prompt"]
        payload: dict[str, Any] = {
            "agent": agent,
            "prompt": text,
            "workspace": task["workspace"],
            "priority": RANK_PRIORITY[task["priority"]],
            "session_mode": "queue",
            "idempotency_key": f"{task['id']}:{attempt}",
        }
        if task["model"]:
            payload["model"] = task["model"]
        cap = self.policy(agent).allowance.max_job_duration
        if cap is not None:
            payload["timeout_minutes"] = min(cap, self.agents[agent].timeout_minutes)
        path = Path(task["path"]) if task["path"] else None
        before = await anyio.to_thread.run_sync(worktree.fingerprint, path) if path else None
        try:
            result = await self.hub.bus.perform("runner.dispatch", payload, context=ctx.child())
        except BusError as e:
            if first:
                raise
            await self.wait(task, f"the runner refused the run: {e.message}", now + 60, agent=agent)
            return answer(await self.fresh(task))
        run = {
            "run_id": result.run_id,
            "task_id": task["id"],
            "attempt": attempt,
            "prompt": text,
            "prompt_sha256": prompt.sha256(text),
            "status": result.status,
            "started_at": now,
            "blocked_before": json.dumps(before),
        }
        status = "running" if result.status == "running" else "pending"
        await self.tasks.start_run(
            task["id"],
            ("pending", "blocked"),
            run,
            agent=agent,
            reason=result.reason,
            next_attempt=None,
        )
        if status == "pending":
            await self.tasks.note(task["id"], status="pending")
        await self.count_job(task, agent, ctx)
        fresh = await self.fresh(task)
        self.publish(
            TaskDispatched(task_id=task["id"], agent=agent, payload={"run_id": result.run_id}),
            fresh,
            ctx,
        )
        if status == "running":
            self.publish(TaskClaimed(task_id=task["id"], agent=agent), fresh, ctx)
        return answer(fresh)

    async def wait(self, task: Row, reason: str, until: float, **fields: Any) -> None:
        await self.tasks.move(
            task["id"],
            ("pending", "running", "blocked"),
            status="pending",
            reason=reason,
            next_attempt=until,
            **fields,
        )

    async def fresh(self, task: Row) -> Row:
        found = await self.tasks.get(task["id"])
        assert found is not None
        return found

    # -- usage -------------------------------------------------------------------------------
    async def count_job(self, task: Row, agent: str, ctx: Context) -> None:
        day = allowance.utc_day(self.clock.now())
        await self.tasks.add_usage(agent, day, jobs=1)
        await self.check_limits(task, agent, day, ctx)

    async def count_usage(
        self, task: Row, agent: str, tokens: int, cost: float, ctx: Context
    ) -> None:
        day = allowance.utc_day(self.clock.now())
        await self.tasks.add_usage(agent, day, tokens=tokens, cost_usd=cost)
        payload = {"tokens": tokens, "cost_usd": cost}
        self.publish(UsageRecorded(task_id=task["id"], agent=agent, payload=payload), task, ctx)
        await self.check_limits(task, agent, day, ctx)

    async def check_limits(self, task: Row, agent: str, day: str, ctx: Context) -> None:
        limits = self.policy(agent).allowance
        used, warned = await self.tasks.usage(agent, day)
        fresh = set(warned)
        for limit, level, fraction in allowance.thresholds(limits, used):
            key = f"{limit}:{level}"
            if key in warned:
                continue
            fresh.add(key)
            reason = f"{agent} has used {fraction:.0%} of its {limit.replace('_', ' ')}"
            cls = QuotaExceeded if level == "exceeded" else QuotaWarning
            self.publish(cls(task_id=task["id"], agent=agent, reason=reason), task, ctx)
        if fresh != warned:
            await self.tasks.mark_warned(agent, day, fresh)

    # -- a run's end -------------------------------------------------------------------------
    async def settle(self, end: RunEnd) -> None:
        """Record how a task's run ended and move the task on. Runs once per run: a
        duplicate or stale end (the message and the sweep both saw it) changes nothing."""
        if end.run_id in self.settling:
            return
        self.settling.add(end.run_id)
        try:
            await self._settle(end)
        finally:
            self.settling.discard(end.run_id)

    async def _settle(self, end: RunEnd) -> None:
        run_id, status, exit_code, reason = end.run_id, end.status, end.exit_code, end.reason
        usage, question = end.usage, end.question
        task = await self.tasks.by_run(run_id)
        if task is None or task["run_id"] != run_id or task["status"] not in ACTIVE:
            return
        run = await self.tasks.run(run_id)
        if run is None or run["ended_at"] is not None:
            return
        ctx = self.context_of(task)
        now = self.clock.now()
        tokens, cost = usage_of(usage)
        await self.tasks.end_run(
            run_id, status=status, exit_code=exit_code, ended_at=now, tokens=tokens, cost_usd=cost
        )
        if tokens or cost:
            await self.count_usage(task, task["agent"], tokens or 0, cost or 0.0, ctx)
        path = Path(task["path"]) if task["path"] else None
        found = json.loads(run["blocked_before"] or "null")
        before: worktree.Fingerprint = tuple(found) if found else None
        asked = question if status == "blocked" else None
        if path is not None and asked is None:
            asked = await anyio.to_thread.run_sync(worktree.take_question, self.root, path, before)
        if asked is None:
            asked = run["question"]
        left = worktree.Leftovers()
        if path is not None and status != "cancelled":
            try:
                left = await anyio.to_thread.run_sync(
                    lambda: worktree.after_run(
                        self.root, path, task["base"], run_id, commit=self.spec.commit_leftovers
                    )
                )
            except git.GitError as e:
                log.warning("task %s: cannot inspect its workspace: %s", task["id"], e)
        facts = {"uncommitted": left.uncommitted}
        if asked:
            await self.finish(
                task, "blocked", "the agent asked a question", question=asked, **facts
            )
            short = asked if len(asked) <= 300 else asked[:297] + "..."
            content = (
                f"task {task['id']} ({task['workspace']}) is blocked: {short} — answer with "
                f"agentic_resume {{task_id: {task['id']}, answer}}"
            )
            self.channel(task, "blocked", content, ctx, question=short)
        elif status == "completed":
            await self.finish(task, "completed", "", ended_at=now, **facts)
            self.channel(task, "completed", self.summary(task, left, tokens, cost), ctx)
        elif status in ("timeout", "cancelled"):
            await self.finish(task, status, reason or status, ended_at=now, **facts)
            self.channel(task, status, f"task {task['id']} ended {status}: {reason}", ctx)
        elif await self.usage_limited(task["agent"]):
            note = f"{task['agent']} reported a usage limit; the task waits for its reset"
            await self.wait(task, note, now, **facts)
            payload = {"retries": task["retries"], "next_attempt": now, "usage_limit": True}
            event = RetryScheduled(
                task_id=task["id"], agent=task["agent"], reason=note, payload=payload
            )
            self.publish(event, task, ctx)
        else:
            await self.failed(task, run_id, reason or f"exit code {exit_code}", now, ctx, facts)
        self.wake.set()

    async def failed(
        self, task: Row, run_id: str, reason: str, now: float, ctx: Context, facts: dict[str, Any]
    ) -> None:
        retries = task["retries"] + 1
        if retries > task["max_retries"]:
            why = f"dead-lettered after {task['max_retries']} retries; last run {run_id}: {reason}"
            await self.finish(task, "failed", why, ended_at=now, retries=task["retries"], **facts)
            self.publish(
                TaskDeadLettered(task_id=task["id"], agent=task["agent"], reason=why), task, ctx
            )
            self.channel(task, "failed", f"task {task['id']} failed for good: {why}", ctx)
            return
        delay = self.spec.retry_base_s * 2 ** (retries - 1)
        why = (
            f"run {run_id} failed ({reason}); retry {retries} of {task['max_retries']} "
            f"in {delay:g}s"
        )
        await self.wait(task, why, now + delay, retries=retries, **facts)
        payload = {"retries": retries, "next_attempt": now + delay}
        event = RetryScheduled(task_id=task["id"], agent=task["agent"], reason=why, payload=payload)
        self.publish(event, task, ctx)

    async def finish(self, task: Row, status: str, reason: str, **fields: Any) -> None:
        moved = await self.tasks.move(task["id"], ACTIVE, status=status, reason=reason, **fields)
        if moved:
            self.publish(
                TaskEnded(task_id=task["id"], agent=task["agent"], reason=reason, status=status),
                task,
                self.context_of(task),
            )

    async def usage_limited(self, agent: str) -> bool:
        """The runner backed the agent's pool off because it reported a usage limit."""
        try:
            state = await self.hub.bus.perform("runner.status", {"limit": 0})
        except BusError:
            return False
        return "usage limit" in state.backoff.get(agent, "")

    def summary(
        self, task: Row, left: worktree.Leftovers, tokens: int | None, cost: float | None
    ) -> str:
        parts = [
            f"task {task['id']} completed: {len(left.commits)} commit(s) on {task['branch']}, "
            f"{len(left.files)} file(s) changed against {task['base']}"
        ]
        if left.committed:
            parts.append(f"uncommitted changes committed: {', '.join(left.committed[:10])}")
        if left.uncommitted:
            parts.append(f"left uncommitted: {', '.join(left.uncommitted[:10])}")
        if tokens or cost:
            parts.append(f"{tokens or 0} tokens, ${cost or 0:.4f}")
        parts.append("review with agentic_diff, merge with agentic_merge")
        return "; ".join(parts)

    # -- messages ----------------------------------------------------------------------------
    def publish(self, message: Message, task: Row, ctx: Context | None = None) -> None:
        self.hub.bus.publish(message, ctx or self.context_of(task))

    def channel(self, task: Row, status: str, content: str, ctx: Context, **extra: str) -> None:
        self.hub.bus.publish(task_event(task, status, content, **extra), ctx)

    # -- resume, cancel ----------------------------------------------------------------------
    async def resume(self, req: ResumeTask, ctx: Context) -> DispatchedTask:
        task = await self.need(req.task_id, "agentic.resume")
        if task["status"] != "blocked":
            raise Refused(
                f"agentic.resume: task {task['id']} is {task['status']}, not blocked: only a "
                "blocked task takes an answer"
            )
        if not task["path"]:
            raise Refused(f"agentic.resume: task {task['id']}'s workspace was cleaned up")
        path = Path(task["path"])
        try:
            await anyio.to_thread.run_sync(worktree.write_answer, self.root, path, req.answer)
        except worktree.SetupFailed as e:
            raise Refused(f"agentic.resume: {e}") from None
        question = task["question"] or ""
        text = prompt.resumed(task["prompt"], question, req.answer)
        await self.tasks.note(task["id"], answer=req.answer, prompt=text)
        fresh = await self.fresh(task)
        return await self.attempt(fresh, ctx)

    async def cancel(self, req: Any, ctx: Context) -> TaskState:
        task = await self.need(req.task_id, "agentic.cancel")
        if task["status"] in FINAL:
            raise Refused(f"agentic.cancel: task {task['id']} already ended {task['status']}")
        now = self.clock.now()
        moved = await self.tasks.move(
            task["id"],
            ("pending", "running", "blocked"),
            status="cancelled",
            reason="cancelled",
            ended_at=now,
            next_attempt=None,
        )
        if moved and task["run_id"] and task["status"] in ACTIVE:
            try:
                await self.hub.bus.perform("runner.kill", {"run_id": task["run_id"]})
            except BusError as e:
                log.warning("task %s: cannot kill run %s: %s", task["id"], task["run_id"], e)
        fresh = await self.fresh(task)
        self.publish(
            TaskEnded(
                task_id=task["id"], agent=task["agent"], reason="cancelled", status="cancelled"
            ),
            fresh,
            ctx,
        )
        return TaskState(
            task_id=fresh["id"],
            status=fresh["status"],
            reason=fresh["reason"],
            run_id=fresh["run_id"],
        )

    async def need(self, task_id: str, action: str) -> Row:
        task = await self.tasks.get(task_id)
        if task is None:
            raise fault(action, "task_id", f"no task {task_id[:80]!r}; agentic_status lists them")
        return task

    # -- report ------------------------------------------------------------------------------
    async def report(self, req: Report) -> Reported:
        task = await self.tasks.by_run(req.run_id)
        if task is None:
            raise fault(
                "agentic.report",
                "run_id",
                f"no task run {req.run_id[:80]!r} (use $FLEETBUS_RUN_ID)",
            )
        text = req.text.strip()
        if req.kind == "question":
            await self.tasks.end_run(req.run_id, question=text[: worktree.MAX_QUESTION])
        await self.tasks.note(task["id"], progress=f"{req.kind}: {text[:2000]}")
        return Reported(task_id=task["id"], kind=req.kind)


def usage_of(usage: dict[str, Any] | None) -> tuple[int | None, float | None]:
    """Tokens and cost from a run's usage reading."""
    if not usage:
        return None, None
    total = usage.get("total_tokens")
    if total is None:
        parts = [usage.get("input_tokens"), usage.get("output_tokens")]
        total = sum(p for p in parts if isinstance(p, int)) if any(parts) else None
    cost = usage.get("cost_usd")
    cost = float(cost) if isinstance(cost, int | float) and math.isfinite(cost) else None
    return (int(total) if isinstance(total, int | float) else None), cost


def clean(segment: str) -> str:
    """A workspace name segment from an org or repo name."""
    out = "".join(c if c.isalnum() or c in "._-" else "-" for c in segment).lstrip("-.")
    return out[:100] or "repo"
