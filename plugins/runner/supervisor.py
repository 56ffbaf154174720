"""Supervision of agent processes: spawn, watch, terminate, settle, adopt on restart.

A claimed run is spawned (launch.py), tracked in the live state, and watched until its
process exits or its deadline passes; the runner ends a run with SIGTERM to its process
group and SIGKILL after the kill grace. Ended runs are settled in batches: the question
each left is taken, its slot freed, its pool told, and every end of the batch recorded in
one commit (each fenced by its attempt), its messages going out after that commit.

Decisions made here where the design is silent:
- The question an agent writes (`.fleetbus/question.md`) is taken when its run ends,
  whatever the ending (see questions.py): the text goes into the run's record (`question`,
  and `runs/<id>/question.md`) and the file leaves the workspace. A run is `blocked` iff
  it exited 0 and a question was there when it ended. With several runs active in one
  workspace, a question goes to the first of them that ends after it was written.
- After any run ends, what is left of its process group is killed: agents must not leave
  daemons behind; the workspace stays held until then.

Never picks what runs next: after each settled batch it calls the `after_settle` it was
given (the scheduler's drain), under the state lock.
"""

from __future__ import annotations

import logging
import re
import signal
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread

from fleetbus.bus import Context, Message, Tx

from . import events, processes, questions
from .clock import Clock, wait_until
from .config import AgentSpec
from .launch import Launcher
from .limits import Pool
from .queue import RunQueue, record_backoff, record_end
from .runs import ActiveRun, Ending, RunRef, duration_text, outcome
from .state import RunnerState

log = logging.getLogger("fleetbus.runner")

Publish = Callable[[Message, Context], Any]


@dataclass(frozen=True)
class LeftBehind:
    """What an ended run left in its workspace and its log, read in a worker thread
    (everything there is the agent's, so it is read bounded and never on the event loop)."""

    taken: questions.Taken
    usage: dict[str, Any] | None
    usage_limit: bool  # the output matches the agent's usage_limit_pattern


@dataclass(frozen=True)
class Settled:
    """A run's end, ready to record: which attempt, and the pool it tripped, if any."""

    run: RunRef
    attempt: int
    started_at: float | None
    end: Ending
    tripped: Pool | None = None

    def record(self, tx: Tx) -> bool:
        """Record the end and queue its messages; a stale or duplicate end is a no-op.
        True when the end was recorded."""
        recorded = record_end(tx, self.run.run_id, self.attempt, self.end)
        if recorded:
            for message, ctx in events.ended(self.run, self.end, self.started_at):
                tx.publish(message, ctx)
        if self.tripped is not None:
            pool = self.tripped
            record_backoff(tx, pool.name, pool.backoff_until, pool.backoff_reason)
            for message, ctx in events.rate_limited(
                pool.name, pool.backoff_until, pool.backoff_reason
            ):
                tx.publish(message, ctx)
        return recorded


class Supervisor:
    def __init__(
        self,
        state: RunnerState,
        queue: RunQueue,
        launcher: Launcher,
        clock: Clock,
        *,
        kill_grace: float,
        root: Path,
        runs_dir: Path,
        publish: Publish,
        task_group: Callable[[], anyio.abc.TaskGroup],
    ) -> None:
        self.state = state
        self.queue = queue
        self.launcher = launcher
        self.clock = clock
        self.kill_grace = kill_grace
        self.root = root
        self.runs_dir = runs_dir
        self.publish = publish
        self.task_group = task_group
        self._ended: list[ActiveRun] = []  # runs whose process is gone, not yet settled
        self._ended_event = anyio.Event()
        self.starting: set[str] = set()  # claimed runs whose process is being spawned
        self._no_starts = anyio.Event()
        self._no_starts.set()

    @property
    def agents(self) -> Mapping[str, AgentSpec]:
        return self.state.agents

    # -- start -------------------------------------------------------------------------------
    async def launch(self, row: dict[str, Any], now: float) -> None:
        """Spawn claimed run `row`, whose slot and session are held already
        (`RunnerState.reserve`) and whose pool was told it started, and supervise it; a
        run that cannot start fails and gives its slot back.

        The row already says running: if the hub dies before the wrapper writes its pid
        file, the next hub knows the agent never started and queues the run again.
        """
        shared = self.state.session_active[row["workspace"]] > 1  # more than this run
        try:
            pid = await self.launcher.spawn(row, workspace_shared=shared)
        except (OSError, ValueError) as e:
            self.state.unreserve(row["agent"], row["model"], row["workspace"])
            reason = f"could not start: {getattr(e, 'strerror', None) or e}"
            end = Ending("failed", reason, None, now)
            settled = Settled(RunRef.of(row), row["attempt"], row["started_at"], end)
            if await self.queue.store.write(settled.record):
                self.state.counts.moved("running", "failed")
            return
        run = ActiveRun.from_row(
            row, pid=pid, started_at=now, run_dir=Path(row["run_dir"]), spawned_here=True
        )
        self.state.track(run, reserved=True)
        for message, ctx in events.started(run, pid):
            self.publish(message, ctx)
        self.task_group().start_soon(self._watch, run, name=f"run {run.run_id}")

    def expect(self, run_id: str) -> None:
        """Run `run_id` is being started (its claim may still be committing):
        `starts_done` waits for it from now on."""
        if not self.starting:
            self._no_starts = anyio.Event()
        self.starting.add(run_id)

    def unexpect(self, run_id: str) -> None:
        """Run `run_id` will not be started after all."""
        self.starting.discard(run_id)
        if not self.starting:
            self._no_starts.set()

    def start(self, row: dict[str, Any]) -> None:
        """Launch claimed run `row`, whose slot, session and pool start are held already,
        in the background: whoever claimed it need not wait for the spawn (nor hold the
        state lock meanwhile). `starts_done` waits for every such launch."""
        self.expect(row["id"])
        self.task_group().start_soon(self.launch_expected, row, name=f"start {row['id']}")

    async def launch_expected(self, row: dict[str, Any]) -> None:
        """Launch claimed run `row`, announced with `expect` and its slot held."""
        try:
            await self.launch(row, row["started_at"])
        finally:
            self.unexpect(row["id"])

    async def starts_done(self) -> None:
        """Return once no claimed run is still being spawned (every one is active, or
        failed to start)."""
        await self._no_starts.wait()

    async def adopt_or_settle(self, row: dict[str, Any]) -> None:
        """A run the previous hub left running: adopt its live process, settle how it
        ended, or queue it again when its process never started."""
        run_dir = Path(row["run_dir"]) if row["run_dir"] else self.runs_dir / row["id"]
        pid, proc_start = row["pid"], row["proc_start"]
        if pid is None:
            pid, proc_start = processes.read_pid_file(run_dir / "pid")
        if pid is None and not (run_dir / "exit").exists():
            # claimed, but the wrapper never started (it writes its pid before the agent
            # runs): the agent never ran, so the run goes back to the queue
            if await self.queue.requeue(row["id"], row["attempt"]):
                self.state.add_queued(row["agent"], row["workspace"])
                log.info("run %s never started before the hub stopped: queued again", row["id"])
            return
        if pid is not None and proc_start is not None and processes.same_process(pid, proc_start):
            run = ActiveRun.from_row(
                row,
                pid=pid,
                started_at=row["started_at"] or self.clock.now(),
                run_dir=run_dir,
                spawned_here=False,
                proc_start=proc_start,
            )
            self.state.track(run)
            log.info("adopted run %s (pid %d)", run.run_id, pid)
            await self.queue.adopt(
                run.run_id, run.attempt, pid, proc_start, str(run_dir), run.started_at
            )
            self.task_group().start_soon(self._watch, run, name=f"run {run.run_id}")
            return
        code = processes.read_int(run_dir / "exit")
        ended = (run_dir / "exit").stat().st_mtime if code is not None else self.clock.now()
        left = await anyio.to_thread.run_sync(
            self._left_behind, row["agent"], row["workspace"], row["id"], run_dir
        )
        died = ("failed", "process died while the hub was down") if code is None else None
        status, reason = outcome(code, left.taken, died)
        end = Ending(status, reason, code, ended, left.usage, left.taken.text)
        await self.queue.store.write(
            Settled(RunRef.of(row), row["attempt"], row["started_at"], end).record
        )
        log.info("run %s ended while the hub was down: %s", row["id"], status)

    # -- watch and terminate -----------------------------------------------------------------
    async def _watch(self, run: ActiveRun) -> None:
        """Wait for the run's process to exit, ending it at its deadline; then hand it to
        the settle."""
        async with anyio.create_task_group() as tg:

            async def exit() -> None:
                if run.spawned_here:
                    run.exit_code = await processes.wait_child(run.pid)
                else:
                    await processes.wait_gone(run.pid, run.proc_start)
                    run.exit_code = processes.read_int(run.run_dir / "exit")
                run.exited.set()
                tg.cancel_scope.cancel()

            async def deadline() -> None:
                await self.clock.sleep_until(run.deadline)
                if self.terminate(
                    run, "timeout", f"timed out after {duration_text(run.timeout_s)}"
                ):
                    await anyio.sleep_forever()  # the exit watcher ends this task group

            tg.start_soon(exit)
            tg.start_soon(deadline)
        processes.signal_group(run.pid, signal.SIGKILL)  # nothing of the group outlives it
        self._ended.append(run)
        self._ended_event.set()

    def terminate(self, run: ActiveRun, status: str, reason: str) -> bool:
        """End `run` as `status`: SIGTERM to its group now, SIGKILL after the kill grace.
        False when the runner is already ending it."""
        if not run.request_stop(status, reason):
            return False
        self.task_group().start_soon(self._term_then_kill, run, name=f"terminate {run.run_id}")
        return True

    async def _term_then_kill(self, run: ActiveRun) -> None:
        processes.signal_group(run.pid, signal.SIGTERM)
        if not await wait_until(self.clock, run.exited, self.clock.now() + self.kill_grace):
            processes.signal_group(run.pid, signal.SIGKILL)

    # -- settle ------------------------------------------------------------------------------
    async def settle_loop(self, after_settle: Callable[[], Awaitable[None]]) -> None:
        """Settle ended runs, all that ended meanwhile in one commit, then `after_settle`."""
        while True:
            await self._ended_event.wait()
            self._ended_event = anyio.Event()
            batch, self._ended = self._ended, []
            # before the lock: each workspace stays held by its run until it is released
            left = await anyio.to_thread.run_sync(self._all_left_behind, batch)
            async with self.state.lock:
                settled = [self._conclude(run, one) for run, one in zip(batch, left, strict=True)]

                def record(tx: Tx, settled: list[Settled] = settled) -> list[str]:
                    return [one.end.status for one in settled if one.record(tx)]

                self.state.counts.ended(await self.queue.store.write(record))
                await after_settle()
            for run in batch:
                run.done.set()

    def _all_left_behind(self, batch: list[ActiveRun]) -> list[LeftBehind]:
        """What the runs of `batch` left behind (in a worker thread)."""
        return [self._left_behind(r.agent, r.workspace, r.run_id, r.run_dir) for r in batch]

    def _left_behind(self, agent: str, workspace: str, run_id: str, run_dir: Path) -> LeftBehind:
        """The question run `run_id` left (taken out of its workspace) and what its
        output's tail says. Blocking, bounded reads: call it in a worker thread."""
        taken = questions.take(self.root, workspace, run_id, run_dir / "question.md")
        spec = self.agents.get(agent)
        if spec is None or (spec.usage is None and not spec.usage_limit_pattern):
            return LeftBehind(taken, None, False)
        output = processes.tail(run_dir / "output.log")
        usage = None
        if spec.usage is not None:
            reading = spec.usage.extract(output)
            usage = {k: v for k, v in reading.model_dump().items() if v is not None} or None
        limit = bool(spec.usage_limit_pattern and re.search(spec.usage_limit_pattern, output))
        return LeftBehind(taken, usage, limit)

    def _conclude(self, run: ActiveRun, left: LeftBehind) -> Settled:
        """Decide how `run` ended, tell its pool, and free its slot."""
        now = self.clock.now()
        stopped = (run.stop_status, run.stop_reason) if run.stop_status is not None else None
        status, reason = outcome(run.exit_code, left.taken, stopped)
        end = Ending(status, reason, run.exit_code, now, left.usage, left.taken.text)
        tripped = self._judge_pool(run, status, left.usage_limit, now)
        self.state.release(run)  # held until the process is gone
        return Settled(run, run.attempt, run.started_at, end, tripped)

    def _judge_pool(
        self, run: ActiveRun, status: str, usage_limit: bool, now: float
    ) -> Pool | None:
        """Tell the run's pool how it went; the pool when this backs it off."""
        pool = self.state.pools.get(run.agent)
        if pool is None:
            return None
        if usage_limit:
            pool.back_off(pool.next_reset(now), "the agent reported a usage limit")
            return pool
        if status == "failed":
            return pool if pool.record_failure(now, run.started_at) else None
        if status in ("completed", "blocked"):
            pool.record_success()
        return None
