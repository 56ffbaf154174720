"""Hostile agents: whatever an agent does to its workspace, its question, its output or its
process group, the hub records the run's end and keeps serving.

Real agent processes (POSIX sh scripts), real files, real SQLite; nothing mocked. No fixed
sleeps: the tests wait on bus messages (`Watch`) or poll a condition with a deadline; an
agent that must outlive its hub waits on a gate file the test creates.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import pytest
import yaml

from fleetbus.bus.errors import ECHO_LIMIT, MESSAGE_LIMIT, ActionNotFound, InvalidInput
from fleetbus.bus.hub import Hub
from fleetbus.plugins.runner import questions
from fleetbus.testing.hub import embedded_hub, isolated_env
from fleetbus.testing.processes import alive, run_pid, wait_for
from fleetbus.testing.runner import (
    WAIT,
    Watch,
    dispatch,
    fake_agent,
    run_info,
    runner_hub,
    status,
)

pytestmark = pytest.mark.anyio

# a POSIX sh agent that reads usage (and a usage limit) from its output, like real ones do
HOSTILE = {
    "command": ["sh", "-s"],
    "prompt": "stdin",
    "context": "file",
    "concurrency": 4,
    "env": ["HOME", "PATH"],
    "usage": {
        "input_tokens": r"usage: .*\binput_tokens=(\d+)",
        "output_tokens": r"usage: .*\boutput_tokens=(\d+)",
    },
    "usage_limit_pattern": "HOSTILE USAGE LIMIT",
}
AGENTS = {"hostile": HOSTILE, "fake": fake_agent()}
TWENTY_MB = 20 * 1000 * 1000


def workspace(home: Path, name: str) -> Path:
    return home / "workspaces" / name


async def ended_while_serving(hub: Hub, watch: Watch, run_id: str) -> Any:
    """The run's `run_completed` message; until it comes, `runner.status` is asked again
    and again, and must answer each time within WAIT (the loop is never stuck)."""
    done: list[Any] = []
    asked = 0

    async with anyio.create_task_group() as tg:

        async def wait_end() -> None:
            done.append(await watch.completed(run_id))
            tg.cancel_scope.cancel()

        async def keep_asking() -> None:
            nonlocal asked
            while True:
                with anyio.fail_after(WAIT):
                    await status(hub)
                asked += 1
                await anyio.sleep(0)  # let the run's end through between questions

        tg.start_soon(wait_end)
        tg.start_soon(keep_asking)
    assert asked >= 1
    with anyio.fail_after(WAIT):  # and still answers after the end
        result = await status(hub)
    assert result.running == 0, result
    return done[0]


async def hostile(hub: Hub, watch: Watch, script: str, name: str) -> Any:
    run = await dispatch(hub, script, name, agent="hostile")
    return await ended_while_serving(hub, watch, run.run_id)


async def still_serving(hub: Hub, watch: Watch) -> None:
    """A plain run after the hostile one starts, ends and is recorded."""
    run = await dispatch(hub, "echo fine", "ok/after/run", agent="fake")
    assert (await watch.completed(run.run_id)).status == "completed"


# --- the workspace replaced by a symlink, with and without a hub restart ---------------------


def swap_script(outside: Path, then: str = "exit 0") -> str:
    return (
        f'cd / && rm -rf "$FLEETBUS_WORKSPACE" && ln -s \'{outside}\' "$FLEETBUS_WORKSPACE"\n'
        f"{then}\n"
    )


@asynccontextmanager
async def plain_hub(home: Path) -> AsyncIterator[Hub]:
    """A runner hub that leaves its runs going when it stops (as `fleetbus stop` does)."""
    config = home.parent / "fleetbus.yaml"
    home.parent.mkdir(parents=True, exist_ok=True)
    config.write_text(yaml.safe_dump({"agents": AGENTS, "dispatch": {"kill_grace": 2}}))
    async with embedded_hub(home, env=isolated_env(home, config=config), serve_socket=False) as hub:
        yield hub


async def test_a_workspace_swapped_for_a_symlink_ends_and_the_hub_restarts(
    home: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep.txt").write_text("untouched\n")
    async with runner_hub(home, agents=AGENTS) as hub:
        watch = Watch(hub)
        done = await hostile(hub, watch, swap_script(outside), "sym/w/up")
        assert (done.status, done.exit_code) == ("completed", 0)
        assert "the workspace is no longer a directory inside the workspace root" in done.reason
        assert workspace(home, "sym/w/up").is_symlink()
        # the workspace now leads outside the root: a new run there is refused, cleanly
        with pytest.raises(InvalidInput, match="workspace"):
            await dispatch(hub, "echo no", "sym/w/up", agent="hostile")
        await still_serving(hub, watch)
    # a new hub on the same home comes up and knows how the run ended
    async with runner_hub(home, agents=AGENTS) as hub:
        info = await run_info(hub, done.run_id)
        assert (info.status, info.exit_code) == ("completed", 0)
        await still_serving(hub, Watch(hub))
    assert (outside / "keep.txt").read_text() == "untouched\n"
    assert sorted(p.name for p in outside.iterdir()) == ["keep.txt"]


async def test_a_workspace_swapped_while_the_hub_is_down_is_settled_by_the_next_hub(
    home: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    gate = tmp_path / "go"
    script = swap_script(outside, f"while [ ! -e '{gate}' ]; do sleep 0.05; done; exit 0")
    async with plain_hub(home) as hub:
        watch = Watch(hub)
        run = await dispatch(hub, script, "sym/w/down", agent="hostile")
        await watch.started(run.run_id)
        swapped = await anyio.to_thread.run_sync(
            wait_for, lambda: workspace(home, "sym/w/down").is_symlink()
        )
        assert swapped
    # the hub is down: the agent ends now, its wrapper records the exit
    gate.touch()
    exit_file = home / "runs" / run.run_id / "exit"
    assert await anyio.to_thread.run_sync(wait_for, exit_file.exists)
    async with runner_hub(home, agents=AGENTS) as hub:
        info = await run_info(hub, run.run_id)
        assert (info.status, info.exit_code) == ("completed", 0), info
        assert "the workspace is no longer a directory" in (info.reason or "")
        await still_serving(hub, Watch(hub))
    # and once more: the home stays usable
    async with runner_hub(home, agents=AGENTS) as hub:
        assert (await run_info(hub, run.run_id)).status == "completed"


# --- questions that are not files, or far too big -------------------------------------------


@pytest.mark.parametrize(
    ("script", "kind"),
    [
        ("mkdir .fleetbus && mkfifo .fleetbus/question.md; exit 0", "a FIFO"),
        ("mkdir -p .fleetbus/question.md/x; exit 0", "a directory"),
    ],
)
async def test_a_question_that_is_not_a_file_never_blocks_the_hub(
    home: Path, script: str, kind: str
) -> None:
    async with runner_hub(home, agents=AGENTS) as hub:
        watch = Watch(hub)
        done = await hostile(hub, watch, script, "q/not/file")
        assert done.status == "completed"
        assert (
            done.reason == f"question not read: .fleetbus/question.md is {kind}, not a regular file"
        )
        assert done.question is None
        assert not os.path.lexists(workspace(home, "q/not/file") / ".fleetbus" / "question.md")
        await still_serving(hub, watch)


async def test_a_fifo_question_held_open_by_a_writer_does_not_block_either(home: Path) -> None:
    # a writer that outlives nothing: it is in the run's group and is killed with it
    script = (
        "mkdir .fleetbus && mkfifo .fleetbus/question.md\n(exec 3>.fleetbus/question.md) &\nexit 0"
    )
    async with runner_hub(home, agents=AGENTS) as hub:
        watch = Watch(hub)
        done = await hostile(hub, watch, script, "q/fifo/held")
        assert done.status == "completed"
        assert "is a FIFO" in done.reason
        await still_serving(hub, watch)


async def test_a_twenty_megabyte_question_is_cut_where_it_is_read(home: Path) -> None:
    script = (
        f"mkdir .fleetbus && head -c {TWENTY_MB} /dev/zero | tr '\\0' y > .fleetbus/question.md"
    )
    async with runner_hub(home, agents=AGENTS) as hub:
        watch = Watch(hub)
        done = await hostile(hub, watch, script, "q/big/one")
        assert done.status == "blocked"
        assert done.question.endswith("(question cut at 64 KiB)")
        assert len(done.question.encode()) <= questions.MAX_QUESTION
        assert len(done.reason) < 400
        event = await watch.wait(
            lambda e: (
                e.topic == "channel"
                and e.message.meta.get("run_id") == done.run_id
                and e.message.meta.get("status") == "blocked"
            )
        )
        assert event.message.content.startswith("hostile is blocked in q/big/one: yyyy")
        assert len(event.message.content) < 400
        assert sum(len(v) for v in event.message.meta.values()) < 1000
        info = await run_info(hub, done.run_id)
        assert info.question == done.question
        kept = home / "runs" / done.run_id / "question.md"
        assert kept.stat().st_size <= questions.MAX_QUESTION + 1
        assert not (workspace(home, "q/big/one") / ".fleetbus" / "question.md").exists()
        # a followup gets the cut question, not 20 MB
        followup = await dispatch(
            hub, "answer: yes", "q/big/one", agent="fake", session_mode="followup"
        )
        assert (await watch.completed(followup.run_id)).status == "completed"
        await still_serving(hub, watch)


# --- output: closed early, binary, huge lines ------------------------------------------------


async def test_an_agent_that_closes_its_stdout_early_is_recorded(home: Path) -> None:
    script = "exec >&- 2>&-\necho nowhere\nexit 0\n"
    async with runner_hub(home, agents=AGENTS) as hub:
        watch = Watch(hub)
        done = await hostile(hub, watch, script, "out/closed/w")
        assert (done.status, done.exit_code) == ("completed", 0)
        await still_serving(hub, watch)


async def test_binary_garbage_and_a_huge_line_of_output_are_read_bounded(home: Path) -> None:
    script = (
        "head -c 3000000 /dev/urandom\n"
        "printf 'usage: input_tokens=12 output_tokens=34\\n'\n"
        f"head -c {TWENTY_MB} /dev/zero | tr '\\0' z\n"
        "head -c 100000 /dev/urandom\n"
        "exit 0\n"
    )
    async with runner_hub(home, agents=AGENTS) as hub:
        watch = Watch(hub)
        done = await hostile(hub, watch, script, "out/bin/w")
        assert (done.status, done.exit_code) == ("completed", 0)
        # the usage line is far before the end of the output: only the tail is read
        assert done.usage is None
        assert (home / "runs" / done.run_id / "output.log").stat().st_size > TWENTY_MB
        # a followup gets the end of that output as its context, without NULs, bounded
        followup = await dispatch(hub, "go on", "out/bin/w", agent="fake", session_mode="followup")
        assert (await watch.completed(followup.run_id)).status == "completed"
        await still_serving(hub, watch)


async def test_an_output_log_swapped_for_a_fifo_is_not_read(home: Path) -> None:
    # the agent can reach its run directory: usage is read from what is there
    script = (
        'd="$FLEETBUS_HOME/runs/$FLEETBUS_RUN_ID"\n'
        'rm -f "$d/output.log" && mkfifo "$d/output.log"\n'
        "exit 0\n"
    )
    async with runner_hub(home, agents=AGENTS) as hub:
        watch = Watch(hub)
        done = await hostile(hub, watch, script, "out/fifo/w")
        assert (done.status, done.exit_code) == ("completed", 0)
        assert done.usage is None
        await still_serving(hub, watch)


async def test_an_exit_file_made_a_fifo_does_not_hang_the_run(home: Path) -> None:
    # the wrapper records the exit code in the run directory, which the agent can reach
    script = 'd="$FLEETBUS_HOME/runs/$FLEETBUS_RUN_ID"\nmkfifo "$d/exit"\nexit 3\n'
    async with runner_hub(home, agents=AGENTS) as hub:
        watch = Watch(hub)
        run = await dispatch(hub, script, "out/exit/w", agent="hostile", timeout_minutes=5)
        done = await ended_while_serving(hub, watch, run.run_id)
        assert (done.status, done.exit_code) == ("failed", 3), done.reason
        exit_file = home / "runs" / run.run_id / "exit"
        assert exit_file.is_file() and exit_file.read_text() == "3\n"
        await still_serving(hub, watch)


# --- a process that escapes its group --------------------------------------------------------


async def test_a_process_that_escapes_with_setsid_does_not_hold_the_run(
    home: Path, tmp_path: Path
) -> None:
    pid_file = tmp_path / "escaped.pid"
    script = (
        f"setsid sh -c 'echo $$ > \"{pid_file}\"; exec sleep 300' "
        "</dev/null >/dev/null 2>&1 &\n"
        f"while [ ! -s '{pid_file}' ]; do sleep 0.02; done\n"
        "exit 0\n"
    )
    escaped = None
    try:
        async with runner_hub(home, agents=AGENTS) as hub:
            watch = Watch(hub)
            done = await hostile(hub, watch, script, "esc/setsid/w")
            assert (done.status, done.exit_code) == ("completed", 0)
            escaped = int(pid_file.read_text())
            # documented: the run's process group is killed at its end; a process that
            # left for a session of its own is outside it and lives on
            assert alive(escaped)
            assert os.getpgid(escaped) == escaped
            group = run_pid(home / "runs" / done.run_id / "pid")
            assert group is not None and os.getpgid(escaped) != group
            await still_serving(hub, watch)
    finally:
        if escaped is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(escaped, signal.SIGKILL)
            assert await anyio.to_thread.run_sync(wait_for, lambda: not alive(escaped))


# --- what fleetbus writes is private ---------------------------------------------------------


async def test_runs_and_each_run_directory_are_private(home: Path) -> None:
    home.mkdir(mode=0o700, parents=True)
    (home / "runs").mkdir(mode=0o755)
    os.chmod(home / "runs", 0o755)  # as an older fleetbus left it
    async with runner_hub(home, agents=AGENTS) as hub:
        watch = Watch(hub)
        run = await dispatch(hub, "echo private", "priv/w/1", agent="fake")
        assert (await watch.completed(run.run_id)).status == "completed"
        assert stat.S_IMODE((home / "runs").stat().st_mode) == 0o700
        assert stat.S_IMODE((home / "runs" / run.run_id).stat().st_mode) == 0o700
        log_mode = stat.S_IMODE((home / "runs" / run.run_id / "output.log").stat().st_mode)
        assert log_mode & 0o077 == 0, oct(log_mode)


# --- errors quote what the caller sent, never all of it --------------------------------------


async def test_errors_cut_what_they_echo_of_a_megabyte_of_input(home: Path) -> None:
    huge = "a" * (1024 * 1024)
    async with runner_hub(home, agents=AGENTS) as hub:
        for payload in (
            {"agent": "hostile", "prompt": "x", "workspace": huge},
            {"agent": "hostile", "prompt": "x", "workspace": f"/{huge}"},
            {"agent": "hostile", "prompt": "x", "workspace": f"ok/{huge}/x y {huge}"},
            {"agent": huge, "prompt": "x", "workspace": "ok/w"},
            {"agent": "hostile", "prompt": "x", "workspace": "ok/w", huge: 1},
        ):
            with pytest.raises(InvalidInput) as caught:
                await hub.bus.perform("runner.dispatch", payload)
            error = caught.value
            assert len(error.message) <= MESSAGE_LIMIT, len(error.message)
            assert "a" * (ECHO_LIMIT + 1) not in error.message
            assert "…" in error.message
            wire = json.dumps(error.to_dict())
            assert len(wire) < 10 * MESSAGE_LIMIT, len(wire)
        with pytest.raises(ActionNotFound) as missing:
            await hub.bus.perform(huge, {})
        assert len(json.dumps(missing.value.to_dict())) < 2 * MESSAGE_LIMIT
