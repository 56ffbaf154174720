"""The Runner: owns agent processes and capacity for one hub.

State lives in SQLite (`runs`, `pools`); the in-memory view (active runs, lane counts,
queued counts, pool rates) is rebuilt from it at startup. Every decision that changes
state — dispatch, drain, settle, kill — holds one lock, so caps hold at every instant.

Decisions this module makes where the issue is silent:
- Debounce applies only to a busy workspace: the first prompt to an idle workspace starts
  at once; prompts that arrive while a run is active merge into the waiting run when they
  come within `debounce_ms` of the previous one, and the merged run waits for that quiet
  period before it starts.
- A followup run continues the run that started last in its workspace before it: that
  run is looked up when the followup STARTS (not when it is dispatched), on every path
  (an idle workspace, a busy one, a prompt merged by debounce), so it is the run that
  really came before it. The followup gets `FLEETBUS_PREVIOUS_RUN_ID` and, as its agent's
  manifest `context` says (`prompt`, `file` or `none`; see followup.py), that run's
  status, its question when it was blocked, and the end of its output.
- A followup to a workspace where nothing has run starts without context; its dispatch
  result says so in `reason` ("no earlier run in this workspace: started without
  context"), since it is the field a caller already reads, and `runner.status` shows no
  `previous_run_id` for it.
- The question an agent writes (`.fleetbus/question.md`) is taken when its run ends,
  whatever the ending (see questions.py): the text goes into the run's record (`question`,
  and `runs/<id>/question.md`) and the file leaves the workspace, so no later run inherits
  it. A run is `blocked` iff it exited 0 and a question was there when it ended; a question
  that is not a regular file is not read, and the run says why in its reason. Something
  already at that path when a run STARTS (left by a process that outlived its run, or by
  a hand, or by an older fleetbus) is taken into the new run's directory as
  `leftover-question.md` and logged, never attributed to the new run; this is skipped
  while another run is active in the workspace (`session.max_concurrent` > 1), whose
  question it may be. With several runs active in one workspace, a question goes to the
  first of them that ends after it was written.
- After any run ends, what is left of its process group is killed: agents must not leave
  daemons behind.
- The environment of an agent is its manifest allowlist plus `PATH`, `LANG`, `LC_ALL`,
  `TZ`, `TMPDIR` and the `FLEETBUS_*` variables.
"""

from __future__ import annotations

import json
import logging
import os
import re
import secrets
import shutil
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anyio

from fleetbus.bus import ChannelPush, Context, InvalidInput, Refused, Store, Tx
from fleetbus.bus.manifests import AgentSpec

from . import followup, processes, questions
from .limits import Lanes, Pool, hhmm
from .models import (
    ENDED,
    PRIORITIES,
    PRIORITY_NAMES,
    DispatchInput,
    DispatchResult,
    KillInput,
    KillResult,
    LaneInfo,
    QueueDrained,
    RateLimitDetected,
    RunCompleted,
    RunInfo,
    RunQueued,
    RunStarted,
    StateResult,
    StatusInput,
    StatusResult,
    WorkspaceInfo,
    WorkspaceQuery,
)
from .workspaces import BadWorkspace, normalize, resolve

if TYPE_CHECKING:
    from fleetbus.bus.hub import Hub

log = logging.getLogger("fleetbus.runner")

PASSED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR")
MAX_ARG_PROMPT = 100 * 1024  # Linux caps one argument at 128 KiB
# questions listed whole in one runner.status answer (newest first); past that, quoted short
STATUS_QUESTION_BYTES = 1024 * 1024
STATUS_CHANNEL = "agent.status"
FLEET_CHANNEL = "fleet"


_FOUND: dict[tuple[str, str], str] = {}


def which(program: str, path: str) -> str | None:
    """`shutil.which`, remembering what it found (dispatch checks the agent's program on
    every call; a program installed later is found on the next call)."""
    hit = _FOUND.get((program, path))
    if hit is not None and os.access(hit, os.X_OK):
        return hit
    found = shutil.which(program, path=path)
    if found is not None:
        _FOUND[(program, path)] = found
    return found


def new_run_id() -> str:
    return f"r{int(time.time() * 1000):x}{secrets.token_hex(3)}"


def duration_text(seconds: float) -> str:
    seconds = max(0, round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    minutes, secs = divmod(seconds, 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"


@dataclass
class RunRef:
    """What messages about a run carry: its identity and who asked for it."""

    run_id: str
    workspace: str
    agent: str
    model: str | None
    origin: dict[str, str]

    @classmethod
    def of(cls, row: dict[str, Any]) -> RunRef:
        origin = row.get("origin")
        return cls(
            row["id"],
            row["workspace"],
            row["agent"],
            row.get("model"),
            json.loads(origin) if isinstance(origin, str) else dict(origin or {}),
        )


@dataclass
class Active(RunRef):
    """A run whose process is alive (or was, until the settle that removes it)."""

    pid: int
    started_at: float
    timeout_s: float
    run_dir: Path
    child: bool  # ours to reap (False when adopted after a restart)
    proc_start: float | None = None
    stop_status: str | None = None  # cancelled | timeout, when we ended it
    stop_reason: str = ""
    exited: anyio.Event = field(default_factory=anyio.Event)
    done: anyio.Event = field(default_factory=anyio.Event)
    exit_code: int | None = None

    def request_stop(self, status: str, reason: str) -> bool:
        if self.stop_status is None:
            self.stop_status, self.stop_reason = status, reason
            return True
        return False


@dataclass
class Head:
    """A queued run considered by the drain."""

    run_id: str
    seq: int
    priority: int
    agent: str
    model: str | None
    workspace: str
    session_mode: str


class Runner:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        m = hub.manifest
        self.agents: dict[str, AgentSpec] = dict(m.agents)
        self.dispatch_spec = m.dispatch
        self.session = m.dispatch.session
        self.root = m.dispatch.resolved_workspace_root(hub.home.root)
        self.runs_dir = hub.home.root / "runs"
        self.lanes = Lanes.from_agents(m.dispatch.total_concurrency, self.agents)
        self.pools = {
            name: Pool(name, spec.rates, m.dispatch.breaker) for name, spec in self.agents.items()
        }
        self.frozen = m.dispatch.start_frozen or hub.env.get("FLEETBUS_FROZEN", "") in (
            "1",
            "true",
            "yes",
        )
        self.active: dict[str, Active] = {}
        self.session_active: Counter[str] = Counter()
        self.queued_by_agent: Counter[str] = Counter()
        self.queued_by_workspace: Counter[str] = Counter()
        self.lock = anyio.Lock()
        self.poked = anyio.Event()
        self._ended: list[Active] = []  # runs whose process is gone, not yet recorded
        self._ended_event = anyio.Event()
        self.wake_at: float | None = None
        self._loop_deadline = 0.0
        self._had_queue = False

    # -- helpers -----------------------------------------------------------------------------
    def now(self) -> float:
        return self.hub.wall_clock()

    @property
    def store(self) -> Store:
        return self.hub.store

    def poke(self) -> None:
        self.poked.set()

    @property
    def queued_total(self) -> int:
        return sum(self.queued_by_agent.values())

    def is_busy(self) -> bool:
        return bool(self.active) or self.queued_total > 0

    # -- startup: hydrate from the store -----------------------------------------------------
    async def startup(self) -> None:
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        self.root.mkdir(parents=True, exist_ok=True)
        now = self.now()

        def load(
            db: Any,
        ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
            running = [dict(r) for r in db.execute("SELECT * FROM runs WHERE status = 'running'")]
            counts = [
                dict(r)
                for r in db.execute(
                    "SELECT agent, workspace, count(*) AS n FROM runs WHERE status = 'queued' "
                    "GROUP BY agent, workspace"
                )
            ]
            pools = [dict(r) for r in db.execute("SELECT * FROM pools")]
            return running, counts, pools

        running, counts, pools = await self.store.read(load)
        for row in pools:
            pool = self.pools.get(row["pool"])
            if pool is not None:
                pool.back_off(row["backoff_until"], row["reason"])
        for name, pool in self.pools.items():
            since = pool.last_reset(now)

            def count(db: Any, name: str = name, since: float = since) -> tuple[int, float | None]:
                row = db.execute(
                    "SELECT coalesce(sum(started_at >= ?), 0), max(started_at) FROM runs WHERE agent = ?",
                    [since, name],
                ).fetchone()
                return int(row[0]), row[1]

            pool.started_today, pool.last_start = await self.store.read(count)
            pool.counted_from = since
        for row in counts:
            self.queued_by_agent[row["agent"]] += row["n"]
            self.queued_by_workspace[row["workspace"]] += row["n"]
        for row in running:
            await self._recover(row)
        self._had_queue = self.queued_total > 0
        self.hub.task_group.start_soon(self._loop, name="runner loop")
        self.hub.task_group.start_soon(self._settler, name="runner settler")
        self.poke()

    async def _recover(self, row: dict[str, Any]) -> None:
        """A run the previous hub left running: adopt it, or settle how it ended."""
        run_dir = Path(row["run_dir"]) if row["run_dir"] else self.runs_dir / row["id"]
        pid, proc_start = row["pid"], row["proc_start"]
        if pid is None:
            pid, proc_start = processes.read_pid_file(run_dir / "pid")
        if pid is None and not (run_dir / "exit").exists():
            # claimed, but the wrapper never started (it writes its pid before the agent
            # runs): the agent never ran, so the run goes back to the queue
            def requeue(tx: Tx) -> None:
                tx.execute(
                    "UPDATE runs SET status = 'queued', started_at = NULL, run_dir = NULL WHERE id = ?",
                    [row["id"]],
                )

            await self.store.write(requeue)
            self.queued_by_agent[row["agent"]] += 1
            self.queued_by_workspace[row["workspace"]] += 1
            log.info("run %s never started before the hub stopped: queued again", row["id"])
            return
        if pid is not None and proc_start is not None and processes.same_process(pid, proc_start):
            active = Active(
                run_id=row["id"],
                workspace=row["workspace"],
                agent=row["agent"],
                model=row["model"],
                pid=pid,
                started_at=row["started_at"] or self.now(),
                timeout_s=row["timeout_s"],
                run_dir=run_dir,
                origin=json.loads(row["origin"] or "{}"),
                child=False,
                proc_start=proc_start,
            )
            self._track(active)
            log.info("adopted run %s (pid %d)", active.run_id, pid)

            def mark(tx: Tx) -> None:
                tx.execute(
                    "UPDATE runs SET status = 'running', pid = ?, proc_start = ?, run_dir = ?, started_at = coalesce(started_at, ?) WHERE id = ?",
                    [pid, proc_start, str(run_dir), active.started_at, active.run_id],
                )

            await self.store.write(mark)
            self.hub.task_group.start_soon(self._supervise, active, name=f"run {active.run_id}")
            return
        code = processes.read_int(run_dir / "exit")
        ended = (run_dir / "exit").stat().st_mtime if code is not None else self.now()
        taken = await self._take_question(row["workspace"], row["id"], run_dir)
        if code is None:
            status, reason = self._outcome(
                code, taken, ("failed", "process died while the hub was down")
            )
        else:
            status, reason = self._outcome(code, taken)
        usage = self._usage(row["agent"], run_dir)
        await self.store.write(
            self._end_writer(row, status, reason, code, ended, usage, question=taken.text)
        )
        log.info("run %s ended while the hub was down: %s", row["id"], status)

    # -- dispatch ----------------------------------------------------------------------------
    def workspace_name(self, value: str | None, where: str, field: str = "workspace") -> str | None:
        """The canonical name of a workspace the caller gave, or InvalidInput naming `field`."""
        if value is None:
            return None
        try:
            return normalize(value, self.root)
        except BadWorkspace as e:
            raise InvalidInput.from_errors(where, [{"field": field, "message": str(e)}]) from None

    def _agent(self, name: str) -> AgentSpec:
        spec = self.agents.get(name)
        if spec is None:
            known = ", ".join(sorted(self.agents)) or "none"
            raise InvalidInput.from_errors(
                "runner.dispatch",
                [{"field": "agent", "message": f"unknown agent {name!r} (known: {known})"}],
            )
        return spec

    def _validate(self, req: DispatchInput) -> tuple[AgentSpec, str | None, str, Path]:
        def bad(fieldname: str, message: str) -> InvalidInput:
            return InvalidInput.from_errors(
                "runner.dispatch", [{"field": fieldname, "message": message}]
            )

        spec = self._agent(req.agent)
        try:
            model = spec.resolve_model(req.model)
        except ValueError as e:
            raise bad("model", str(e)) from None
        if model is not None and (model.startswith("-") or "\x00" in model):
            raise bad("model", "must not start with '-' or contain a NUL byte")
        if "\x00" in req.prompt:
            raise bad("prompt", "contains a NUL byte")
        if not req.prompt.strip():
            raise bad("prompt", "must not be empty")
        size = len(req.prompt.encode())
        limit = self.dispatch_spec.max_prompt_bytes
        if size > limit:
            raise bad(
                "prompt", f"is {size} bytes; the limit is {limit} (dispatch.max_prompt_bytes)"
            )
        if spec.prompt == "arg":
            if size > MAX_ARG_PROMPT:
                raise bad(
                    "prompt",
                    f"is {size} bytes, too long for a command-line argument ({MAX_ARG_PROMPT}); "
                    "give the agent `prompt: stdin` or `prompt: file`",
                )
            if req.prompt.startswith("-"):
                raise bad(
                    "prompt",
                    f"starts with '-', which {req.agent} could read as an option; start it with a word",
                )
        if req.idempotency_key is not None and "\x00" in req.idempotency_key:
            raise bad("idempotency_key", "contains a NUL byte")
        try:
            name = normalize(req.workspace, self.root)
            path = resolve(name, self.root, create=False)
        except BadWorkspace as e:
            raise bad("workspace", str(e)) from None
        program = spec.render("x", "x", str(path), model, sys.executable)[0]
        if which(program, self.hub.env.get("PATH", os.defpath)) is None:
            raise Refused(
                f"agent {req.agent!r} cannot run here: {program!r} is not installed or not on PATH; "
                "install it, or choose another agent"
            )
        return spec, model, name, path

    async def dispatch(self, req: DispatchInput, ctx: Context) -> DispatchResult:
        spec, model, name, _path = self._validate(req)
        mode = req.session_mode or self.session.mode
        timeout_s = (req.timeout_minutes or spec.timeout_minutes) * 60
        async with self.lock:
            if req.idempotency_key is not None:
                existing = await self.store.read(
                    lambda db: db.execute(
                        "SELECT * FROM runs WHERE idempotency_key = ?", [req.idempotency_key]
                    ).fetchone()
                )
                if existing is not None:
                    return await self._result(dict(existing))
            try:
                resolve(name, self.root, create=True)
            except BadWorkspace as e:
                raise InvalidInput.from_errors(
                    "runner.dispatch", [{"field": "workspace", "message": str(e)}]
                ) from None
            except OSError as e:
                raise Refused(f"cannot create workspace {name}: {e.strerror}") from e
            now = self.now()
            base = self._new_row(req, ctx, name, model, mode, timeout_s, now)
            busy = self.session_active[name] >= self.session.max_concurrent
            if mode == "interrupt":
                await self._interrupt(name, ctx)
            # a followup learns here whether anything ran before it (for its result); the
            # run it continues is looked up again when it starts
            previous = await self._previous_run(name) if mode == "followup" else None
            if (
                not busy
                and not self.frozen
                and self.queued_total == 0
                and self.lanes.blocker(req.agent, model) is None
                and self.pools[req.agent].blocker(now) is None
            ):
                # the fast path: nothing waits ahead of it, so it starts now (one commit)
                row = await self._insert(
                    base,
                    status="running",
                    reason="",
                    started_at=now,
                    claimed=True,
                    previous_run=previous,
                )
                await self._launch(row, now)
                return self._noted(await self._result(row), mode, previous, ahead=0)
            queued_here = await self._session_queue(name) if self.queued_by_workspace[name] else []
            if queued_here and self.session.debounce_ms > 0 and mode != "interrupt":
                last = queued_here[-1]
                window = self.session.debounce_ms / 1000
                merged = len(last["prompt"].encode()) + 2 + len(req.prompt.encode())
                fits = merged <= self.dispatch_spec.max_prompt_bytes and (
                    spec.prompt != "arg" or merged <= MAX_ARG_PROMPT
                )
                if (
                    now - last["merged_at"] <= window
                    and last["agent"] == req.agent
                    and last["model"] == model
                    and req.idempotency_key is None
                    and fits
                ):
                    merged_result = await self._merge(
                        last, req.prompt, PRIORITIES[req.priority], now + window, mode
                    )
                    return self._noted(merged_result, mode, previous, len(queued_here) - 1)
            if len(queued_here) >= self.session.cap:
                if self.session.drop == "new":
                    row = await self._insert(
                        base,
                        status="cancelled",
                        reason=f"refused: the session queue of {name} is full ({self.session.cap} waiting; drop new)",
                    )
                    return DispatchResult(
                        run_id=row["id"],
                        status="cancelled",
                        reason=f"session queue full ({self.session.cap})",
                    )
                await self._cancel_runs(
                    [queued_here[0]["id"]],
                    f"dropped: the session queue of {name} was full ({self.session.cap} waiting; drop old)",
                )
            waiting = busy or bool(queued_here)
            row = await self._insert(
                base,
                status="queued",
                reason="session busy" if waiting else "",
                not_before=now + self.session.debounce_ms / 1000 if waiting else 0.0,
            )
            await self._drain()
            result = self._noted(await self._result(row), mode, previous, len(queued_here))
            if result.status == "queued":
                self._had_queue = True  # "queue drained" is news once this one starts
                self.hub.bus.publish(
                    RunQueued(
                        run_id=row["id"],
                        workspace=name,
                        agent=req.agent,
                        model=model,
                        reason=result.reason,
                        queue_position=result.queue_position,
                    ),
                    ctx,
                )
            return result

    @staticmethod
    def _noted(
        result: DispatchResult, mode: str, previous: str | None, ahead: int
    ) -> DispatchResult:
        """`result`, saying so when a followup has no earlier run to continue (`ahead`:
        runs queued before it in its workspace, which may yet give it one)."""
        if mode != "followup" or previous is not None or ahead:
            return result
        if result.status == "running":
            result.reason = followup.NO_EARLIER_RUN
        elif result.status == "queued":
            result.reason = f"{result.reason}; {followup.NO_EARLIER_RUN_YET}"
        return result

    async def _result(self, row: dict[str, Any]) -> DispatchResult:
        """What dispatch answers about `row`: its status, why it waits and its place."""
        status = "running" if row["id"] in self.active else row["status"]
        if status != "queued":
            return DispatchResult.model_validate(
                {
                    "run_id": row["id"],
                    "status": status,
                    "reason": row["reason"] if status != "running" else "",
                }
            )
        priority, seq = row["priority"], row["seq"]

        def position(db: Any) -> int:
            # two range counts on the (status, priority, seq) index, not one OR over all
            before = db.execute(
                "SELECT count(*) FROM runs WHERE status = 'queued' AND priority < ?", [priority]
            ).fetchone()[0]
            same = db.execute(
                "SELECT count(*) FROM runs WHERE status = 'queued' AND priority = ? AND seq < ?",
                [priority, seq],
            ).fetchone()[0]
            return 1 + int(before) + int(same)

        return DispatchResult(
            run_id=row["id"],
            status="queued",
            reason=self.why_queued(row),
            queue_position=await self.store.read(position),
        )

    def why_queued(self, row: dict[str, Any]) -> str:
        """Why a queued run waits, in words, from the runner's live state."""
        if self.frozen:
            return "frozen"
        if self.session_active[row["workspace"]] >= self.session.max_concurrent:
            return "session busy"
        now = self.now()
        if (row.get("not_before") or 0) > now:
            return "debounce: waiting for more prompts"
        lane = self.lanes.blocker(row["agent"], row.get("model"))
        if lane is not None:
            return lane
        pool = self.pools.get(row["agent"])
        blocked = pool.blocker(now) if pool is not None else None
        if blocked is not None:
            return blocked[0]
        return "waiting for earlier runs"

    async def _session_queue(self, workspace: str) -> list[dict[str, Any]]:
        def q(db: Any) -> list[dict[str, Any]]:
            return [
                dict(r)
                for r in db.execute(
                    "SELECT id, agent, model, prompt, max(created_at, not_before - ?) AS merged_at FROM runs "
                    "WHERE workspace = ? AND status = 'queued' ORDER BY seq",
                    [self.session.debounce_ms / 1000, workspace],
                )
            ]

        return await self.store.read(q)

    async def _merge(
        self, last: dict[str, Any], prompt: str, priority: int, not_before: float, mode: str
    ) -> DispatchResult:
        """Append a prompt to the workspace's waiting run; the more urgent priority wins,
        and a followup makes the merged run a followup (it gets the context)."""

        def merge(tx: Tx) -> dict[str, Any]:
            return dict(
                tx.execute(
                    "UPDATE runs SET prompt = prompt || ? || ?, not_before = ?, "
                    "priority = min(priority, ?), "
                    "session_mode = CASE WHEN ? = 'followup' THEN 'followup' ELSE session_mode END "
                    "WHERE id = ? RETURNING *",
                    ["\n\n", prompt, not_before, priority, mode, last["id"]],
                ).fetchone()
            )

        result = await self._result(await self.store.write(merge))
        result.reason = f"merged into the waiting run {last['id']} (debounce); {result.reason}"
        return result

    async def _previous_run(self, workspace: str) -> str | None:
        """The run that started last in `workspace` (running or ended), which a followup
        starting now continues; runs cancelled before they started do not count."""
        row = await self.store.read(
            lambda db: db.execute(
                "SELECT id FROM runs WHERE workspace = ? AND started_at IS NOT NULL "
                "ORDER BY started_at DESC, seq DESC LIMIT 1",
                [workspace],
            ).fetchone()
        )
        return str(row[0]) if row else None

    @staticmethod
    def _new_row(
        req: DispatchInput,
        ctx: Context,
        workspace: str,
        model: str | None,
        mode: str,
        timeout_s: float,
        now: float,
    ) -> dict[str, Any]:
        """The columns of a new run that do not depend on what the session queue decides."""
        return {
            "workspace": workspace,
            "agent": req.agent,
            "model": model,
            "prompt": req.prompt,
            "priority": PRIORITIES[req.priority],
            "session_mode": mode,
            "timeout_s": timeout_s,
            "idempotency_key": req.idempotency_key,
            "origin": json.dumps(dict(ctx.origin)) if ctx.origin else None,
            "created_at": now,
        }

    async def _insert(
        self, base: dict[str, Any], *, claimed: bool = False, **columns: Any
    ) -> dict[str, Any]:
        """Insert a run from `base` plus `columns`; returns the row with its `seq`.

        `claimed` marks a run inserted already running (it gets its run directory).
        """
        run_id = new_run_id()
        row = {"id": run_id, **base, **columns}
        if row["status"] in ENDED:
            row["ended_at"] = row["created_at"]
        if claimed:
            row["run_dir"] = str(self.runs_dir / run_id)

        def insert(tx: Tx) -> int:
            cursor = tx.execute(
                f"INSERT INTO runs ({', '.join(row)}) VALUES ({', '.join('?' * len(row))})",
                list(row.values()),
            )
            return int(cursor.lastrowid or 0)

        row["seq"] = await self.store.write(insert)
        if row["status"] == "queued":
            self.queued_by_agent[row["agent"]] += 1
            self.queued_by_workspace[row["workspace"]] += 1
        return row

    async def _interrupt(self, workspace: str, ctx: Context) -> None:
        """Cancel the workspace's active runs and its waiting prompts (a new one replaces them)."""
        queued = await self._session_queue(workspace)
        if queued:
            await self._cancel_runs(
                [r["id"] for r in queued], "cancelled: interrupted by a newer prompt"
            )
        for active in [a for a in self.active.values() if a.workspace == workspace]:
            self._stop(active, "cancelled", "interrupted by a newer prompt")

    # -- the drain ---------------------------------------------------------------------------
    async def _loop(self) -> None:
        """Drain on poke, on the timer, and when a delay or debounce the drain saw runs out."""
        while True:
            now = self.now()
            deadline = now + self.dispatch_spec.drain_interval
            if self.wake_at is not None:
                deadline = min(deadline, self.wake_at)
            self._loop_deadline = deadline
            with anyio.move_on_after(max(0.0, deadline - now)):
                await self.poked.wait()
            self.poked = anyio.Event()
            async with self.lock:
                await self._drain()

    async def _drain(self) -> None:
        """Start queued runs while lanes allow: highest priority first, then oldest."""
        self.wake_at = None
        if self.frozen:
            return
        started = 0
        while self.lanes.running_total < self.lanes.total:
            now = self.now()
            best: Head | None = None
            for agent in [a for a, n in self.queued_by_agent.items() if n > 0]:
                if agent not in self.agents or self.lanes.blocker(agent, None) is not None:
                    continue
                blocked = self.pools[agent].blocker(now)
                if blocked is not None:
                    self._wake(blocked[1])
                    continue
                head = await self._head(agent, now)
                if head is not None and (
                    best is None or (head.priority, head.seq) < (best.priority, best.seq)
                ):
                    best = head
            if best is None:
                break
            await self._start(best)
            started += 1
        if self._had_queue and self.queued_total == 0 and started:
            self._had_queue = False
            fleet = Context(caller="runner")  # fleet-wide: no session's origin
            self.hub.bus.publish(QueueDrained(started=started), fleet)
            self.hub.bus.publish(
                ChannelPush(
                    channel=FLEET_CHANNEL,
                    content="queue drained: every queued run has started",
                    meta={"channel": FLEET_CHANNEL, "event": "queue_drained"},
                ),
                fleet,
            )

    def _wake(self, at: float) -> None:
        """Have the loop drain again at `at` (sooner than it planned, if need be)."""
        if self.wake_at is None or at < self.wake_at:
            self.wake_at = at
        if at < self._loop_deadline - 0.001:
            self.poked.set()

    async def _head(self, agent: str, now: float) -> Head | None:
        """The first queued run of `agent` that may start now: one indexed query that
        skips busy workspaces, full model lanes and runs still in their debounce."""
        busy = [w for w, n in self.session_active.items() if n >= self.session.max_concurrent]
        full = [
            m
            for (a, m), n in self.lanes.by_model.items()
            if a == agent and self.lanes.blocker(agent, m) is not None and n > 0
        ]
        sql = (
            "SELECT id, seq, priority, model, workspace, session_mode FROM runs "
            "WHERE status = 'queued' AND agent = ? AND not_before <= ?"
        )
        params: list[Any] = [agent, now]
        if busy:
            sql += f" AND workspace NOT IN ({','.join('?' * len(busy))})"
            params += busy
        if full:
            sql += f" AND (model IS NULL OR model NOT IN ({','.join('?' * len(full))}))"
            params += full
        sql += " ORDER BY priority, seq LIMIT 1"

        def head(db: Any) -> tuple[Any, Any]:
            row = db.execute(sql, params).fetchone()
            later = None
            if row is None:  # anything in its debounce window? then look again when it ends
                later = db.execute(
                    "SELECT min(not_before) FROM runs WHERE status = 'queued' AND agent = ? AND not_before > ?",
                    [agent, now],
                ).fetchone()[0]
            return row, later

        row, later = await self.store.read(head)
        if later is not None:
            self._wake(later)
        if row is None:
            return None
        return Head(
            row["id"],
            row["seq"],
            row["priority"],
            agent,
            row["model"],
            row["workspace"],
            row["session_mode"],
        )

    async def _start(self, head: Head) -> None:
        """Claim a queued run (committed before anything is spawned), then launch it."""
        now = self.now()
        run_dir = str(self.runs_dir / head.run_id)
        previous = (
            await self._previous_run(head.workspace) if head.session_mode == "followup" else None
        )

        def claim(tx: Tx) -> dict[str, Any]:
            return dict(
                tx.execute(
                    "UPDATE runs SET status = 'running', reason = '', started_at = ?, run_dir = ?, "
                    "previous_run = ? WHERE id = ? RETURNING *",
                    [now, run_dir, previous, head.run_id],
                ).fetchone()
            )

        row = await self.store.write(claim)
        self.queued_by_agent[head.agent] -= 1
        self.queued_by_workspace[head.workspace] -= 1
        await self._launch(row, now)

    async def _launch(self, row: dict[str, Any], now: float) -> None:
        """Spawn a claimed run's process and start supervising it.

        The row already says running: if the hub dies before the wrapper writes its pid
        file, the next hub knows the agent never started and queues the run again.
        """
        run_id, agent = row["id"], row["agent"]
        spec = self.agents[agent]
        run_dir = Path(row["run_dir"])
        run_dir.mkdir(parents=True, exist_ok=True)
        workspace = self.root / row["workspace"]
        prompt = row["prompt"]
        env = {k: v for k, v in self.hub.env.items() if k in PASSED_ENV or k in spec.env}
        env.update(
            FLEETBUS_RUN_ID=run_id,
            FLEETBUS_SOCKET=str(self.hub.socket_path),
            FLEETBUS_HOME=str(self.hub.home.root),
            FLEETBUS_WORKSPACE=str(workspace),
        )
        previous = row.get("previous_run")
        if previous:
            env["FLEETBUS_PREVIOUS_RUN_ID"] = previous
        elif row.get("session_mode") == "followup":
            log.info("run %s: no earlier run in %s: started without context", run_id, workspace)
        prompt_file = run_dir / "prompt.txt"
        try:
            if previous and spec.context != "none":
                prompt = await self._with_context(spec, previous, prompt, run_dir, env)
            if spec.prompt != "arg":
                prompt_file.write_text(prompt)
            resolve(row["workspace"], self.root, create=True)
            await self._take_leftover(row["workspace"], run_id, run_dir)
            argv = spec.render(
                prompt if spec.prompt == "arg" else None,
                str(prompt_file) if spec.prompt == "file" else None,
                str(workspace),
                row["model"],
                sys.executable,
            )
            pid = processes.spawn(
                argv,
                cwd=workspace,
                env=env,
                run_dir=run_dir,
                log=run_dir / "output.log",
                stdin=prompt_file if spec.prompt == "stdin" else None,
            )
        except (OSError, ValueError) as e:
            reason = f"could not start: {getattr(e, 'strerror', None) or e}"
            await self.store.write(self._end_writer(row, "failed", reason, None, now, None))
            return
        active = Active(
            run_id=run_id,
            workspace=row["workspace"],
            agent=agent,
            model=row["model"],
            pid=pid,
            started_at=now,
            timeout_s=row["timeout_s"],
            run_dir=run_dir,
            origin=json.loads(row["origin"] or "{}"),
            child=True,
        )
        self._track(active)
        self.pools[agent].started(now)
        ctx = self._context(active)
        self.hub.bus.publish(
            RunStarted(
                run_id=run_id, workspace=active.workspace, agent=agent, model=active.model, pid=pid
            ),
            ctx,
        )
        self.hub.bus.publish(
            self._channel(active, "running", f"{agent} started {active.workspace} (run {run_id})"),
            ctx,
        )
        self.hub.task_group.start_soon(self._supervise, active, name=f"run {run_id}")

    async def _with_context(
        self, spec: AgentSpec, previous: str, prompt: str, run_dir: Path, env: dict[str, str]
    ) -> str:
        """The prompt of a followup of run `previous`, its context added as the agent's
        manifest says: before the prompt, or in a file named by FLEETBUS_CONTEXT_FILE."""
        row = await self.store.read(
            lambda db: db.execute(
                "SELECT status, exit_code, run_dir, question FROM runs WHERE id = ?", [previous]
            ).fetchone()
        )
        if row is None:
            return prompt
        before = followup.Previous(
            run_id=previous,
            status=row["status"],
            exit_code=row["exit_code"],
            question=row["question"] if row["status"] == "blocked" else None,
            output_tail=processes.tail(Path(row["run_dir"]) / "output.log", followup.TAIL_BYTES)
            if row["run_dir"]
            else "",
        )
        if spec.context == "file":
            context_file = run_dir / "context.md"
            context_file.write_text(followup.text(before) + "\n")
            env["FLEETBUS_CONTEXT_FILE"] = str(context_file)
            return prompt
        # on a command line, prompt and context together must fit in one argument
        limit = MAX_ARG_PROMPT - len(prompt.encode()) if spec.prompt == "arg" else None
        context = followup.text(before, limit)
        return followup.prefixed(context, prompt, answers=before.question is not None)

    async def _take_leftover(self, workspace: str, run_id: str, run_dir: Path) -> None:
        """Take a question that is already in the workspace when a run starts into the run's
        directory (`leftover-question.md`), so it is never taken for this run's own."""
        if self.session_active[workspace] or not questions.present(self.root / workspace):
            return  # another run of the workspace is active: the question may be its own
        taken = await anyio.to_thread.run_sync(
            questions.take, self.root, workspace, run_id, run_dir / "leftover-question.md"
        )
        log.info(
            "run %s: took a leftover %s out of %s before it started%s",
            run_id,
            questions.RELATIVE,
            workspace,
            f" ({taken.problem})" if taken.problem else "",
        )

    def _track(self, active: Active) -> None:
        self.active[active.run_id] = active
        self.lanes.add(active.agent, active.model)
        self.session_active[active.workspace] += 1

    def _context(self, ref: RunRef) -> Context:
        return Context(caller=f"run:{ref.run_id}", origin=ref.origin)

    def _channel(self, active: RunRef, status: str, content: str, **extra: str) -> ChannelPush:
        meta = {
            "channel": STATUS_CHANNEL,
            "run_id": active.run_id,
            "workspace": active.workspace,
            "agent": active.agent,
            "status": status,
            **extra,
        }
        if active.model:
            meta["model"] = active.model
        return ChannelPush(channel=STATUS_CHANNEL, content=content, meta=meta)

    # -- supervision -------------------------------------------------------------------------
    async def _supervise(self, active: Active) -> None:
        async with anyio.create_task_group() as tg:

            async def watch() -> None:
                if active.child:
                    active.exit_code = await processes.wait_child(active.pid)
                else:
                    await processes.wait_gone(active.pid, active.proc_start)
                    active.exit_code = processes.read_int(active.run_dir / "exit")
                active.exited.set()
                tg.cancel_scope.cancel()

            async def deadline() -> None:
                remaining = active.started_at + active.timeout_s - self.now()
                await anyio.sleep(max(0.0, remaining))
                if self._stop(
                    active, "timeout", f"timed out after {duration_text(active.timeout_s)}"
                ):
                    await anyio.Event().wait()  # the watcher ends this task group

            tg.start_soon(watch)
            tg.start_soon(deadline)
        processes.signal_group(active.pid, signal.SIGKILL)  # nothing of the group outlives the run
        self._ended.append(active)
        self._ended_event.set()

    async def _settler(self) -> None:
        """Record ended runs, all that ended meanwhile in one commit, then drain."""
        while True:
            await self._ended_event.wait()
            self._ended_event = anyio.Event()
            batch, self._ended = self._ended, []
            # before the lock: each workspace stays held by its run until _settle frees it
            taken = await anyio.to_thread.run_sync(self._take_questions, batch)
            async with self.lock:
                writers = [self._settle(active, q) for active, q in zip(batch, taken, strict=True)]

                def record(tx: Tx, writers: list[Callable[[Tx], None]] = writers) -> None:
                    for write in writers:
                        write(tx)

                await self.store.write(record)
                await self._drain()
            for active in batch:
                active.done.set()

    def _stop(self, active: Active, status: str, reason: str) -> bool:
        """Ask a run to end: SIGTERM to its group now, SIGKILL after the grace period."""
        if not active.request_stop(status, reason):
            return False
        self.hub.task_group.start_soon(self._terminate, active, name=f"terminate {active.run_id}")
        return True

    async def _terminate(self, active: Active) -> None:
        processes.signal_group(active.pid, signal.SIGTERM)
        with anyio.move_on_after(self.dispatch_spec.kill_grace):
            await active.exited.wait()
            return
        processes.signal_group(active.pid, signal.SIGKILL)

    async def _take_question(self, workspace: str, run_id: str, run_dir: Path) -> questions.Taken:
        """The question run `run_id` left in its workspace, taken out of it (off the loop:
        the workspace is the agent's, and may hold anything)."""
        return await anyio.to_thread.run_sync(
            questions.take, self.root, workspace, run_id, run_dir / "question.md"
        )

    def _take_questions(self, batch: list[Active]) -> list[questions.Taken]:
        """The questions the runs of `batch` left (in a worker thread)."""
        return [
            questions.take(self.root, a.workspace, a.run_id, a.run_dir / "question.md")
            for a in batch
        ]

    @staticmethod
    def _outcome(
        code: int | None, taken: questions.Taken, stopped: tuple[str, str] | None = None
    ) -> tuple[str, str]:
        """(status, reason) of an ended run: `stopped` when the runner ended it (or knows
        better), else `blocked` iff it exited 0 leaving a question, `completed` for other
        exits 0, `failed` for the rest. A question that could not be read says why."""
        if stopped is not None:
            status, reason = stopped
        elif code is None:
            status, reason = "failed", "the process ended without an exit status"
        elif code != 0:
            status, reason = "failed", f"exit {code}"
        elif taken.text is not None:
            return "blocked", f"question: {questions.first_line(taken.text)}"
        else:
            status, reason = "completed", ""
        if taken.problem:
            why = f"question not read: {taken.problem}"
            reason = f"{reason}; {why}" if reason else why
        return status, reason

    def _usage(self, agent: str, run_dir: Path) -> dict[str, Any] | None:
        spec = self.agents.get(agent)
        if spec is None or spec.usage is None:
            return None
        reading = spec.usage.extract(processes.tail(run_dir / "output.log"))
        data = {k: v for k, v in reading.model_dump().items() if v is not None}
        return data or None

    def _settle(self, active: Active, taken: questions.Taken) -> Callable[[Tx], None]:
        """Decide how a run ended and free its slot; returns what records and announces it."""
        now = self.now()
        code = active.exit_code
        stopped = (
            (active.stop_status, active.stop_reason) if active.stop_status is not None else None
        )
        status, reason = self._outcome(code, taken, stopped)
        usage = self._usage(active.agent, active.run_dir)
        pool = self.pools.get(active.agent)
        tripped: str | None = None
        if pool is not None:
            spec = self.agents[active.agent]
            output = (
                processes.tail(active.run_dir / "output.log") if spec.usage_limit_pattern else ""
            )
            if spec.usage_limit_pattern and re.search(spec.usage_limit_pattern, output):
                pool.back_off(pool.next_reset(now), "the agent reported a usage limit")
                tripped = pool.backoff_reason
            elif status == "failed":
                if pool.record_failure(now, active.started_at):
                    tripped = pool.backoff_reason
            elif status in ("completed", "blocked"):
                pool.record_success()
        self.active.pop(active.run_id, None)
        self.lanes.remove(active.agent, active.model)
        self.session_active[active.workspace] -= 1  # held until the process is gone
        row = {
            "id": active.run_id,
            "workspace": active.workspace,
            "agent": active.agent,
            "model": active.model,
            "started_at": active.started_at,
            "origin": json.dumps(active.origin),
        }
        return self._end_writer(
            row,
            status,
            reason,
            code,
            now,
            usage,
            pool=pool if tripped else None,
            question=taken.text,
        )

    def _end_messages(
        self,
        ref: RunRef,
        status: str,
        reason: str,
        code: int | None,
        started_at: float | None,
        ended: float,
        usage: dict[str, Any] | None = None,
        question: str | None = None,
    ) -> tuple[RunCompleted, ChannelPush]:
        """The run_completed message and the channel event announcing how a run ended."""
        duration = ended - started_at if started_at else None
        completed = RunCompleted(
            run_id=ref.run_id,
            workspace=ref.workspace,
            agent=ref.agent,
            model=ref.model,
            status=status,
            exit_code=code,
            duration_s=round(duration, 3) if duration is not None else None,
            reason=reason,
            usage=usage,
            question=question,
        )
        extra = {"exit_code": str(code)} if code is not None else {}
        if duration is not None:
            extra["duration_s"] = f"{duration:.1f}"
        if status == "blocked" and question is not None:
            content = f"{ref.agent} is blocked in {ref.workspace}: {questions.snippet(question)}"
        elif duration is None:
            content = f"{ref.agent} dropped {ref.workspace}: {status} ({reason})"
        else:
            exit_text = f", exit {code}" if code is not None else ""
            why = f" ({reason})" if reason and reason != f"exit {code}" else ""
            took = duration_text(duration)
            content = f"{ref.agent} finished {ref.workspace}: {status} in {took}{exit_text}{why}"
        return completed, self._channel(ref, status, content, **extra)

    def _end_writer(
        self,
        row: dict[str, Any],
        status: str,
        reason: str,
        code: int | None,
        ended: float,
        usage: dict[str, Any] | None,
        *,
        pool: Pool | None = None,
        question: str | None = None,
    ) -> Callable[[Tx], None]:
        """What records a run's end in a transaction (messages go out after its commit)."""
        active = RunRef.of(row)
        ctx = self._context(active)
        completed, channel = self._end_messages(
            active, status, reason, code, row.get("started_at"), ended, usage, question
        )
        usage_json = json.dumps(usage) if usage else None

        def end(tx: Tx) -> None:
            tx.execute(
                "UPDATE runs SET status = ?, reason = ?, exit_code = ?, ended_at = ?, usage = ?, "
                "question = ? WHERE id = ?",
                [status, reason, code, ended, usage_json, question, active.run_id],
            )
            tx.publish(completed, ctx)
            tx.publish(channel, ctx)
            if pool is not None:
                tx.execute(
                    "INSERT INTO pools (pool, backoff_until, reason) VALUES (?, ?, ?) "
                    "ON CONFLICT (pool) DO UPDATE SET backoff_until = excluded.backoff_until, reason = excluded.reason",
                    [pool.name, pool.backoff_until, pool.backoff_reason],
                )
                fleet = Context(caller="runner")  # fleet-wide: no session's origin
                tx.publish(
                    RateLimitDetected(
                        pool=pool.name, until=pool.backoff_until, reason=pool.backoff_reason
                    ),
                    fleet,
                )
                tx.publish(
                    ChannelPush(
                        channel=FLEET_CHANNEL,
                        content=f"{pool.name} backs off until {hhmm(pool.backoff_until)} UTC: {pool.backoff_reason}",
                        meta={"channel": FLEET_CHANNEL, "event": "rate_limit", "pool": pool.name},
                    ),
                    fleet,
                )

        return end

    # -- control actions ---------------------------------------------------------------------
    async def _cancel_runs(self, ids: list[str], reason: str) -> int:
        if not ids:
            return 0
        now = self.now()

        def cancel(tx: Tx) -> list[dict[str, Any]]:
            marks = ",".join("?" * len(ids))
            return [
                dict(r)
                for r in tx.execute(
                    f"UPDATE runs SET status = 'cancelled', reason = ?, ended_at = ? WHERE status = 'queued' AND id IN ({marks}) "
                    "RETURNING id, agent, workspace, model, origin",
                    [reason, now, *ids],
                )
            ]

        rows = await self.store.write(cancel)
        for r in rows:
            self.queued_by_agent[r["agent"]] -= 1
            self.queued_by_workspace[r["workspace"]] -= 1
            ref = RunRef.of(r)
            for message in self._end_messages(ref, "cancelled", reason, None, None, now):
                self.hub.bus.publish(message, self._context(ref))
        return len(rows)

    async def start(self) -> StateResult:
        self.frozen = False
        async with self.lock:
            await self._drain()
        return self.state()

    async def stop(self) -> StateResult:
        self.frozen = True
        return self.state()

    async def poke_now(self) -> StateResult:
        async with self.lock:
            await self._drain()
        return self.state()

    def state(self) -> StateResult:
        return StateResult(frozen=self.frozen, running=len(self.active), queued=self.queued_total)

    async def kill(self, req: KillInput) -> KillResult:
        everything = req.run_id is None and req.agent is None and req.workspace is None
        if req.agent is not None:
            self._agent(req.agent)
        workspace = self.workspace_name(req.workspace, "runner.kill")
        async with self.lock:
            if everything:
                self.frozen = True
            targets = [
                a
                for a in self.active.values()
                if everything
                or a.run_id == req.run_id
                or (req.agent is not None and a.agent == req.agent)
                or (workspace is not None and a.workspace == workspace)
            ]
            clauses, params = [], []
            if everything:
                clauses.append("1")
            if req.run_id is not None:
                clauses.append("id = ?")
                params.append(req.run_id)
            if req.agent is not None:
                clauses.append("agent = ?")
                params.append(req.agent)
            if workspace is not None:
                clauses.append("workspace = ?")
                params.append(workspace)
            where = " OR ".join(clauses)
            queued = await self.store.read(
                lambda db: [
                    r[0]
                    for r in db.execute(
                        f"SELECT id FROM runs WHERE status = 'queued' AND ({where})", params
                    )
                ]
            )
            if req.run_id is not None and not targets and not queued:
                known = await self.store.read(
                    lambda db: db.execute(
                        "SELECT status FROM runs WHERE id = ?", [req.run_id]
                    ).fetchone()
                )
                if known is None:
                    raise InvalidInput.from_errors(
                        "runner.kill", [{"field": "run_id", "message": f"no run {req.run_id!r}"}]
                    )
                raise Refused(f"run {req.run_id} is not running or queued (it is {known[0]})")
            cancelled = await self._cancel_runs(queued, "cancelled by runner.kill")
            for a in targets:
                self._stop(a, "cancelled", "killed by runner.kill")
        with anyio.move_on_after(self.dispatch_spec.kill_grace + 10):
            for a in targets:
                await a.done.wait()
        return KillResult(killed=len(targets), cancelled=cancelled, frozen=self.frozen)

    # -- status ------------------------------------------------------------------------------
    async def status(self, req: StatusInput) -> StatusResult:
        clauses, params = [], []
        if req.run_id is not None:
            clauses.append("id = ?")
            params.append(req.run_id)
        workspace = self.workspace_name(req.workspace, "runner.status")
        if workspace is not None:
            clauses.append("workspace = ?")
            params.append(workspace)
        if req.status is not None:
            clauses.append("status = ?")
            params.append(req.status)
        if req.agent is not None:
            clauses.append("agent = ?")
            params.append(req.agent)
        where = " AND ".join(clauses) or "1"

        def read(db: Any) -> tuple[dict[str, int], list[dict[str, Any]]]:
            counts = {
                r[0]: r[1]
                for r in db.execute(
                    f"SELECT status, count(*) FROM runs WHERE {where} GROUP BY status", params
                )
            }
            rows = [
                dict(r)
                for r in db.execute(
                    f"SELECT id, workspace, agent, model, priority, status, reason, pid, created_at, not_before, started_at, "
                    f"ended_at, exit_code, run_dir, usage, question, previous_run FROM runs WHERE {where} "
                    "ORDER BY seq DESC LIMIT ?",
                    [*params, req.limit],
                )
            ]
            return counts, rows

        counts, rows = await self.store.read(read)
        runs = []
        room = STATUS_QUESTION_BYTES
        for r in rows:
            active = self.active.get(r["id"])
            question = r["question"]
            if question is not None:
                size = len(question.encode())
                if size <= room:
                    room -= size
                else:  # a long list of long questions must not make an answer too big to send
                    question = f"{questions.snippet(question)} (cut: ask runner.status for run {r['id']} alone)"
            runs.append(
                RunInfo(
                    run_id=r["id"],
                    workspace=r["workspace"],
                    agent=r["agent"],
                    model=r["model"],
                    priority=PRIORITY_NAMES[r["priority"]],
                    status=r["status"],
                    reason=self.why_queued(r) if r["status"] == "queued" else r["reason"],
                    pid=active.pid if active else r["pid"],
                    created_at=r["created_at"],
                    started_at=r["started_at"],
                    ended_at=r["ended_at"],
                    exit_code=r["exit_code"],
                    log=str(Path(r["run_dir"]) / "output.log") if r["run_dir"] else None,
                    usage=json.loads(r["usage"]) if r["usage"] else None,
                    question=question,
                    previous_run_id=r["previous_run"],
                )
            )
        now = self.now()
        return StatusResult(
            running=counts.get("running", 0),
            queued=counts.get("queued", 0),
            completed=counts.get("completed", 0),
            failed=counts.get("failed", 0),
            blocked=counts.get("blocked", 0),
            cancelled=counts.get("cancelled", 0),
            timeout=counts.get("timeout", 0),
            total=sum(counts.values()),
            frozen=self.frozen,
            lanes={
                name: LaneInfo(running=n, limit=limit)
                for name, (n, limit) in self.lanes.info().items()
            },
            backoff={
                name: f"until {hhmm(p.backoff_until)} UTC: {p.backoff_reason}"
                for name, p in self.pools.items()
                if p.backoff_until > now
            },
            runs=runs,
        )

    async def workspaces(self, q: WorkspaceQuery) -> list[WorkspaceInfo]:
        name = self.workspace_name(q.name, "WorkspaceQuery", "name")

        def read(db: Any) -> list[dict[str, Any]]:
            sql = (
                "SELECT workspace, id, status, agent FROM runs WHERE seq IN "
                "(SELECT max(seq) FROM runs GROUP BY workspace)"
            )
            params: list[Any] = []
            if name is not None:
                sql = "SELECT workspace, id, status, agent FROM runs WHERE workspace = ? ORDER BY seq DESC LIMIT 1"
                params = [name]
            return [dict(r) for r in db.execute(sql, params)]

        rows = await self.store.read(read)
        infos = [
            WorkspaceInfo(
                name=r["workspace"],
                path=str(self.root / r["workspace"]),
                status=r["status"],
                run_id=r["id"],
                agent=r["agent"],
            )
            for r in rows
        ]
        if q.status is not None:
            infos = [i for i in infos if i.status == q.status]
        return sorted(infos, key=lambda i: i.name)
