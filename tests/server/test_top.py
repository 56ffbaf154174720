"""`fleetbus top`, driven for real: the view runs in a private tmux server against a real hub
(`fleetbus hub` in the test's home), keys go in with `send-keys`, the screen comes back
with `capture-pane`. Every wait polls the screen or the hub up to a deadline.

The view runs under a small `sh` wrapper that, once it exits, prints its exit code and
whether the terminal is back in its normal mode (line editing, echo, signals), so each
way out also checks that the terminal was restored.

The pure parts (key parsing, output lines, the layout at a given size) are tested directly.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

from fleetbus.plugins.runner.models import LaneInfo, RunInfo, RunStatus, StatusResult
from fleetbus.server.top import parse_keys
from fleetbus.server.topview import (
    MIN_HEIGHT,
    MIN_WIDTH,
    Fleet,
    last_line,
    read_last_lines,
    render,
)
from fleetbus.testing.clients import missing
from fleetbus.testing.hub import cli_command, hub_process
from fleetbus.testing.processes import one_line_error, reap_runs, wait_for
from fleetbus.testing.pytest_plugin import CLI
from fleetbus.testing.tmux import Tmux, tmux_binary

START_TIMEOUT = 30  # the view up: a cold interpreter on a busy machine
SHOW_TIMEOUT = 15  # a change on the bus (or a key) shown on the screen
# Runs the view, then says how it ended and whether the terminal is back in its usual mode.
WRAPPER = (
    '"$@"; code=$?; '
    "if stty -a | tr ' ;' '\\n\\n' | grep -qx -e -icanon -e -echo -e -isig; "
    "then t=raw; else t=restored; fi; "
    'echo "top exited $code, terminal $t"'
)


def ended(code: int) -> str:
    return f"top exited {code}, terminal restored"


def expect_exit(tmux: Tmux, code: int, what: str) -> str:
    """Wait for the view to end with `code` and the terminal restored. Looks above the
    screen too: tmux's "Pane is dead" line scrolls the top line away."""
    return expect(tmux, ended(code), what, history=100)


def call(cli: CLI, action: str, payload: dict[str, Any] | None = None) -> Any:
    """`fleetbus call ACTION PAYLOAD` against the test's hub; its JSON result."""
    proc = cli("call", action, json.dumps(payload or {}))
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def run_of(cli: CLI, run_id: str) -> dict[str, Any]:
    runs = call(cli, "runner.status", {"run_id": run_id})["runs"]
    assert runs, f"the hub does not know run {run_id}"
    return dict(runs[0])


def dispatch(cli: CLI, workspace: str, prompt: str) -> str:
    result = call(
        cli, "runner.dispatch", {"agent": "fake", "workspace": workspace, "prompt": prompt}
    )
    return str(result["run_id"])


def row(run_id: str, status: str) -> re.Pattern[str]:
    """The run's line in the runs table with `status`."""
    return re.compile(rf"{run_id}\s+fake\s+\S+\s+{status}\b")


@contextmanager
def running_top(
    home: Path, env: dict[str, str], *, width: int = 120, height: int = 40
) -> Iterator[Tmux]:
    """A hub in `home` and `fleetbus top` in a private tmux server; both stopped after, and
    whatever runs the test started killed."""
    binary = tmux_binary() or missing("tmux", "apt-get install tmux")
    # no pager options of the developer's: the default pager, as a new user has it
    view_env = {k: v for k, v in env.items() if k != "PAGER" and not k.startswith("LESS")}
    view_env["LESSHISTFILE"] = "-"  # less keeps no history file
    argv = ["sh", "-c", WRAPPER, "sh", *cli_command("top")]
    try:
        with (
            hub_process(home, env),
            Tmux(
                home.parent / "tmux.sock", env=view_env, width=width, height=height, binary=binary
            ) as tmux,
        ):
            tmux.start(argv, cwd=home.parent)
            yield tmux
    finally:
        reap_runs(home)


def expect(tmux: Tmux, pattern: str | re.Pattern[str], what: str, *, history: int = 0) -> str:
    """Wait for `pattern` on the screen (and `history` lines above it); fail saying `what`."""

    def shown(_: str) -> bool:
        screen = tmux.screen(history=history)
        if isinstance(pattern, re.Pattern):
            return pattern.search(screen) is not None
        return pattern in screen

    found = tmux.wait_until(shown, SHOW_TIMEOUT)
    screen = tmux.screen(history=history)
    assert found is not None, f"{what}\n--- the screen ---\n{screen}"
    return screen


def wait_for_view(tmux: Tmux) -> str:
    screen = tmux.wait_for_text("Lanes", START_TIMEOUT)
    assert screen is not None, f"fleetbus top did not come up:\n{tmux.screen(history=50)}"
    return screen


# -- the view in a terminal --------------------------------------------------------------------
@pytest.mark.slow
def test_top_shows_a_run_while_it_runs_then_its_completion(
    home: Path, env: dict[str, str], cli: CLI
) -> None:
    with running_top(home, env) as tmux:
        screen = wait_for_view(tmux)
        assert "dispatching" in screen and "(no runs yet)" in screen, screen
        assert re.search(r"fake\s+\S+ 0/\d+", screen), screen  # the fake agent's lane bar

        run_id = dispatch(cli, "demo/w1", "echo hi from the fake agent; wait gate; echo bye")
        expect(tmux, row(run_id, "running"), "the running run is not listed")
        # its last line of output, its channel event, its lane in use
        expect(tmux, "hi from the fake agent", "the run's output line is not shown")
        expect(tmux, "fake started demo/w1", "the run's channel event is not shown")
        screen = expect(tmux, re.compile(r"fake\s+\S+ 1/\d+"), "the fake lane does not show 1")
        # the elapsed time advances while the run waits at its gate
        expect(tmux, re.compile(rf"{run_id}.*running\s+[2-9]s"), "the elapsed time did not advance")

        (home / "workspaces" / "demo" / "w1" / "gate").touch()
        assert wait_for(lambda: run_of(cli, run_id)["status"] == "completed", SHOW_TIMEOUT)
        screen = expect(tmux, row(run_id, "completed"), "the completed run is not listed")
        assert "exit 0" in screen, screen
        expect(tmux, "fake finished demo/w1: completed", "no completion event on the screen")

        tmux.send_keys("q")
        expect_exit(tmux, 0, "q did not end the view with the terminal restored")


@pytest.mark.slow
def test_f_freezes_dispatch_and_u_unfreezes_it(home: Path, env: dict[str, str], cli: CLI) -> None:
    with running_top(home, env) as tmux:
        wait_for_view(tmux)
        tmux.send_keys("f")
        assert wait_for(lambda: call(cli, "runner.status", {"limit": 0})["frozen"], SHOW_TIMEOUT)
        expect(tmux, "FROZEN", "the view does not say frozen")

        # a run dispatched now waits, and the queue says why
        run_id = dispatch(cli, "demo/w2", "echo queued then ran")
        expect(tmux, row(run_id, "queued"), "the queued run is not listed")
        expect(tmux, re.compile(r"Queue 1 waiting: frozen"), "the queue does not say why")

        tmux.send_keys("u")
        assert wait_for(
            lambda: not call(cli, "runner.status", {"limit": 0})["frozen"], SHOW_TIMEOUT
        )
        expect(tmux, "dispatching", "the view still says frozen")
        expect(tmux, row(run_id, "completed"), "the run did not start once unfrozen")
        screen = expect(tmux, "Queue empty", "the queue did not empty")
        assert "FROZEN" not in screen, screen

        # a freeze by another client shows at once: runner.frozen, not a poll
        call(cli, "runner.stop", {})
        expect(tmux, "FROZEN", "a freeze made elsewhere did not show")
        call(cli, "runner.start", {})
        expect(tmux, "dispatching", "an unfreeze made elsewhere did not show")


@pytest.mark.slow
def test_a_too_small_window_says_so_and_the_view_comes_back(
    home: Path, env: dict[str, str]
) -> None:
    with running_top(home, env, width=40, height=10) as tmux:
        screen = tmux.wait_for_text("terminal too small", START_TIMEOUT)
        assert screen is not None, tmux.screen(history=50)
        assert "40x10" in screen and f"{MIN_WIDTH}x{MIN_HEIGHT}" in screen, screen
        assert "Lanes" not in screen, screen

        tmux.resize(120, 40)
        screen = expect(tmux, "Lanes", "the view did not come back when the window grew")
        assert "too small" not in screen, screen

        tmux.resize(59, 30)
        expect(tmux, "terminal too small: 59x30", "a narrow window was drawn anyway")

        tmux.send_keys("C-c")  # Ctrl-C quits too (exit 130), the terminal restored
        expect_exit(tmux, 130, "Ctrl-C did not end the view cleanly")


@pytest.mark.slow
def test_K_kills_the_selected_run_once_confirmed(home: Path, env: dict[str, str], cli: CLI) -> None:
    with running_top(home, env) as tmux:
        wait_for_view(tmux)
        run_id = dispatch(cli, "demo/w3", "echo waiting at the gate; wait gate")
        expect(tmux, re.compile(rf"> {run_id}.*running"), "the run is not selected")

        tmux.send_keys("K")
        expect(tmux, f"kill run {run_id}", "K did not ask to confirm")
        tmux.send_keys("n")
        expect(tmux, f"run {run_id} not killed", "another key did not keep the run")
        assert run_of(cli, run_id)["status"] == "running"

        tmux.send_keys("K")
        expect(tmux, f"kill run {run_id}", "K did not ask to confirm")
        tmux.send_keys("y")
        assert wait_for(lambda: run_of(cli, run_id)["status"] == "cancelled", SHOW_TIMEOUT)
        expect(tmux, row(run_id, "cancelled"), "the killed run is not shown cancelled")
        expect(tmux, f"run {run_id} killed", "no note of the kill")


@pytest.mark.slow
def test_l_opens_the_log_of_the_selected_run_in_the_pager(
    home: Path, env: dict[str, str], cli: CLI
) -> None:
    if shutil.which("less") is None:
        missing("less", "apt-get install less")
    with running_top(home, env) as tmux:
        wait_for_view(tmux)
        run_id = dispatch(cli, "demo/w4", "echo first line of the log; echo the last line")
        expect(tmux, row(run_id, "completed"), "the run did not complete")

        tmux.send_keys("l")
        screen = expect(tmux, "output.log", "less did not open the run's log")
        assert "first line of the log" in screen and "the last line" in screen, screen
        assert "Lanes" not in screen, screen

        tmux.send_keys("q")  # less quits; the view is back and still takes keys
        expect(tmux, "Lanes", "the view did not come back after the pager")
        tmux.send_keys("q")
        expect_exit(tmux, 0, "q did not end the view after the pager")


@pytest.mark.slow
def test_top_ends_cleanly_when_the_hub_goes_away(home: Path, env: dict[str, str], cli: CLI) -> None:
    with running_top(home, env) as tmux:
        wait_for_view(tmux)
        stopped = cli("stop")
        assert stopped.returncode == 0, stopped.stderr
        screen = expect_exit(tmux, 2, "the view did not end when the hub went away")
        assert "error: the hub went away; fleetbus top stopped" in screen, screen
        assert "Traceback" not in screen, screen


@pytest.mark.slow
def test_top_refuses_a_terminal_it_cannot_draw_on(home: Path, env: dict[str, str]) -> None:
    binary = tmux_binary() or missing("tmux", "apt-get install tmux")
    argv = ["sh", "-c", WRAPPER, "sh", "env", "TERM=dumb", *cli_command("top")]
    with Tmux(home.parent / "tmux.sock", env=env, width=120, height=20, binary=binary) as tmux:
        tmux.start(argv, cwd=home.parent)
        screen = expect_exit(tmux, 2, "a dumb terminal was not refused")
        assert "error: fleetbus top needs a terminal that can draw" in screen, screen
    assert not home.exists()  # refused before it started a hub


def test_top_needs_a_terminal(cli: CLI, home: Path) -> None:
    proc = cli("top")  # stdin and stdout are not a terminal here
    assert proc.returncode == 2
    assert "needs a terminal" in one_line_error(proc)
    assert not home.exists()  # refused before it started a hub


# -- the pure parts ----------------------------------------------------------------------------
def test_keys_are_parsed_from_what_the_terminal_sends() -> None:
    assert parse_keys(b"fu") == ["f", "u"]
    assert parse_keys(b"\x1b[A\x1b[B\x1bOA\x1bOB") == ["up", "down", "up", "down"]
    assert parse_keys(b"\r\n\x03\x1b") == ["enter", "enter", "ctrl-c", "escape"]
    assert parse_keys(b"\x1b[5~\x1b[1;5Cq") == ["pageup", "unknown", "q"]


def test_the_last_line_of_output_is_clean(tmp_path: Path) -> None:
    assert last_line("one\ntwo\n\n") == "two"
    assert last_line("10%\r50%\r90%\n") == "90%"
    assert last_line("\x1b[31mred\x1b[0m and \x07bell\x1b]0;title\x07") == "red and bell"
    assert last_line("") == ""
    log = tmp_path / "output.log"
    log.write_text("x" * 10_000 + "\nlast words\n")
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # never opened for reading: it must not hang
    assert read_last_lines([("a", str(log)), ("b", str(fifo)), ("c", str(tmp_path / "none"))]) == {
        "a": "last words",
        "b": "",
        "c": "",
    }


def run_info(n: int, status: RunStatus = "running") -> RunInfo:
    return RunInfo(
        run_id=f"r{n:017x}",
        workspace=f"org/repo/task-{n}",
        agent="fake",
        model=None,
        priority="medium",
        status=status,
        reason="lane full: fake 4/4" if status == "queued" else "",
        pid=None,
        created_at=1000.0,
        started_at=1000.0 if status != "queued" else None,
        ended_at=None,
        exit_code=None,
        log=None,
    )


def screen_of(fleet: Fleet, width: int, height: int) -> list[str]:
    console = Console(width=width, height=height, record=True, color_system=None)
    console.print(render(fleet, width, height, now=1065.0))
    return console.export_text().splitlines()


def test_the_view_fits_its_terminal_and_keeps_the_selection_in_sight() -> None:
    lanes = {f"agent{n}": LaneInfo(running=n, limit=4) for n in range(8)}
    status = StatusResult(
        running=30,
        queued=10,
        completed=0,
        failed=0,
        blocked=0,
        cancelled=0,
        timeout=0,
        total=40,
        frozen=True,
        lanes=lanes,
        backoff={"fake": "until 10:00 UTC: limit"},
        runs=[],
    )
    fleet = Fleet(home="/h", status=status)
    fleet.set_runs(
        [run_info(n) for n in range(30)], [run_info(n, "queued") for n in range(30, 40)], []
    )
    fleet.move(35)
    for width, height in ((MIN_WIDTH, MIN_HEIGHT), (120, 40), (200, 60)):
        lines = screen_of(fleet, width, height)
        assert len(lines) == height, (width, height, lines)
        assert all(len(line) <= width for line in lines)
        text = "\n".join(lines)
        assert "FROZEN" in text and "10 waiting: lane full: fake 4/4 (10)" in text, text
        assert lines[-1].startswith("f freeze"), text
        assert f"> {run_info(35).run_id}" in text, text  # scrolled to the selected run
        assert "1m05s" in text, text  # elapsed since started_at
    small = "\n".join(screen_of(fleet, MIN_WIDTH - 1, 40))
    assert "terminal too small: 59x40" in small and "Lanes" not in small
