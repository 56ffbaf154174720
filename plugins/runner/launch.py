"""Starting a claimed run's process: its environment, its prompt, its command line.

Decisions made here where the design is silent:
- The environment of an agent is its manifest allowlist plus `PATH`, `LANG`, `LC_ALL`,
  `TZ`, `TMPDIR` and the `FLEETBUS_*` variables.
- A followup run continues the run that started last in its workspace before it (the
  scheduler looks it up when the followup starts, see scheduler.py). It gets
  `FLEETBUS_PREVIOUS_RUN_ID` and, as its agent's manifest `context` says (`prompt`, `file`
  or `none`; see followup.py), that run's status, its question when it was blocked, and
  the end of its output.
- Something already at `.fleetbus/question.md` when a run starts (left by a process that
  outlived its run, by a hand, or by an older fleetbus) is taken into the new run's
  directory as `leftover-question.md` and logged, never attributed to the new run; this is
  skipped while another run is active in the workspace, whose question it may be.

Reads the previous run's record through the queue; never changes the database, publishes
nothing, and keeps no state: the supervisor owns the process once it is spawned.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import anyio.to_thread

from . import followup, processes, questions
from .config import AgentSpec
from .queue import RunQueue
from .runs import MAX_ARG_PROMPT
from .workspaces import resolve

log = logging.getLogger("fleetbus.runner")

PASSED_ENV = ("PATH", "LANG", "LC_ALL", "TZ", "TMPDIR")


class Launcher:
    def __init__(
        self,
        queue: RunQueue,
        agents: Mapping[str, AgentSpec],
        root: Path,
        env: Mapping[str, str],
        fleetbus_env: Mapping[str, str],
    ) -> None:
        self.queue = queue
        self.agents = agents
        self.root = root
        self.env = env  # the hub's environment: agents get only what they may see
        self.fleetbus_env = fleetbus_env  # FLEETBUS_SOCKET, FLEETBUS_HOME

    async def spawn(self, row: dict[str, Any], *, workspace_shared: bool) -> int:
        """Spawn the process of claimed run `row`; its pid. `workspace_shared`: another
        run is active in its workspace. Raises OSError or ValueError when it cannot start.

        Every directory, file and the spawn itself are made in a worker thread (one trip):
        the event loop, which answers every caller, never waits on the filesystem."""
        run_id = row["id"]
        spec = self.agents[row["agent"]]
        run_dir = Path(row["run_dir"])
        workspace = self.root / row["workspace"]
        env = self.environment(spec, run_id, workspace)
        previous = row.get("previous_run")
        if previous:
            env["FLEETBUS_PREVIOUS_RUN_ID"] = previous
        elif row.get("session_mode") == "followup":
            log.info("run %s: no earlier run in %s: started without context", run_id, workspace)
        prompt = row["prompt"]
        if previous and spec.context != "none":
            await anyio.to_thread.run_sync(self.make_dirs, run_dir, row["workspace"])
            prompt = await self.with_context(spec, previous, prompt, run_dir, env)
        prompt_file = run_dir / "prompt.txt"
        argv = spec.render(
            prompt if spec.prompt == "arg" else None,
            str(prompt_file) if spec.prompt == "file" else None,
            str(workspace),
            row["model"],
            sys.executable,
        )

        def start() -> int:
            # one trip to a worker thread for all of it: a start costs one hop, not four
            self.make_dirs(run_dir, row["workspace"])
            if not workspace_shared:
                self.take_leftover(row["workspace"], run_id, run_dir)
            if spec.prompt != "arg":
                prompt_file.write_text(prompt)
            return processes.spawn(
                argv,
                cwd=workspace,
                env=env,
                run_dir=run_dir,
                log=run_dir / "output.log",
                stdin=prompt_file if spec.prompt == "stdin" else None,
            )

        return await anyio.to_thread.run_sync(start)

    def make_dirs(self, run_dir: Path, workspace: str) -> None:
        """The run's private directory and its workspace (kept inside the root)."""
        run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        run_dir.chmod(0o700)  # private like the home, whatever made it before
        resolve(workspace, self.root, create=True)

    def environment(self, spec: AgentSpec, run_id: str, workspace: Path) -> dict[str, str]:
        env = {k: v for k, v in self.env.items() if k in PASSED_ENV or k in spec.env}
        env.update(self.fleetbus_env)
        env.update(FLEETBUS_RUN_ID=run_id, FLEETBUS_WORKSPACE=str(workspace))
        return env

    async def with_context(
        self, spec: AgentSpec, previous: str, prompt: str, run_dir: Path, env: dict[str, str]
    ) -> str:
        """The prompt of a followup of run `previous`, its context added as the agent's
        manifest says: before the prompt, or in a file named by FLEETBUS_CONTEXT_FILE."""
        row = await self.queue.context_of(previous)
        if row is None:
            return prompt
        before = followup.Previous(
            run_id=previous,
            status=row["status"],
            exit_code=row["exit_code"],
            question=row["question"] if row["status"] == "blocked" else None,
            output_tail=await anyio.to_thread.run_sync(
                processes.tail, Path(row["run_dir"]) / "output.log", followup.TAIL_BYTES
            )
            if row["run_dir"]
            else "",
        )
        if spec.context == "file":
            context_file = run_dir / "context.md"
            await anyio.to_thread.run_sync(context_file.write_text, followup.text(before) + "\n")
            env["FLEETBUS_CONTEXT_FILE"] = str(context_file)
            return prompt
        # on a command line, prompt and context together must fit in one argument
        limit = MAX_ARG_PROMPT - len(prompt.encode()) if spec.prompt == "arg" else None
        context = followup.text(before, limit)
        return followup.prefixed(context, prompt, answers=before.question is not None)

    def take_leftover(self, workspace: str, run_id: str, run_dir: Path) -> None:
        """Take a question that is already in the workspace when a run starts into the
        run's directory (`leftover-question.md`), so it is never taken for its own.
        Blocking: call it in a worker thread."""
        if not questions.present(self.root / workspace):
            return
        taken = questions.take(self.root, workspace, run_id, run_dir / "leftover-question.md")
        log.info(
            "run %s: took a leftover %s out of %s before it started%s",
            run_id,
            questions.RELATIVE,
            workspace,
            f" ({taken.problem})" if taken.problem else "",
        )
