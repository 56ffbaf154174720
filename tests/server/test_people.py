"""The commands for people (server/people.py): `status`, `logs`, `dispatch`, `kill`,
`freeze`, `unfreeze`, `tasks`, `task`, `answer`, `actions` and the readable `tail`.

Real subprocesses against a real hub and the bundled fake agent; the `home` fixture stops
the hubs, and every other process a test starts is ended by its pid."""

from __future__ import annotations

import json
import os
import pty
import queue
import re
import signal
import stat
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

import pytest

from fleetbus.bus.paths import Home
from fleetbus.server import fastcli, people
from fleetbus.testing.hub import cli_command
from fleetbus.testing.processes import end_process, one_line_error, reap_runs, wait_for
from fleetbus.testing.pytest_plugin import CLI
from fleetbus.testing.startup import CLICK, run_loaded

DEADLINE = 30.0
RUN = re.compile(r"^run (r[0-9a-f]+) (running|queued)\b")


@pytest.fixture(autouse=True)
def _reap(home: Path) -> Iterator[None]:
    """Runs a failed test left behind are killed (by the pids their wrappers recorded)."""
    yield
    reap_runs(home)


# -- helpers ---------------------------------------------------------------------------------
def ok(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 0, proc
    return proc.stdout


def dispatch(cli: CLI, workspace: str, prompt: str, *extra: str) -> str:
    out = ok(cli("dispatch", "fake", workspace, prompt, *extra))
    match = RUN.match(out)
    assert match and len(out.splitlines()) == 1, out
    return match.group(1)


def run_status(cli: CLI, run_id: str) -> dict[str, Any]:
    runs = json.loads(ok(cli("status", "--json", "--limit", "1000")))["runs"]
    (run,) = [r for r in runs if r["run_id"] == run_id]
    return dict(run)


def ended(cli: CLI, run_id: str) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def done() -> bool:
        seen.update(run_status(cli, run_id))
        return seen["status"] in people.ENDED

    assert wait_for(done, DEADLINE), seen
    return seen


def popen(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        cli_command(*args),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


class Lines:
    """A stream's lines as they come, read in a thread."""

    def __init__(self, stream: IO[str] | None) -> None:
        assert stream is not None
        self.seen: list[str] = []
        self.queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: IO[str]) -> None:
        try:
            for line in stream:
                self.queue.put(line.rstrip("\n"))
        except (ValueError, OSError):  # closed by the test at its end
            pass
        self.queue.put(None)

    def until(self, predicate: Callable[[str], bool], timeout: float = DEADLINE) -> str:
        """The first line (from now) for which `predicate` holds; fails at the deadline."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                line = self.queue.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"no such line within {timeout}s; seen: {self.seen}")
            if line is None:
                pytest.fail(f"the stream ended; seen: {self.seen}")
            self.seen.append(line)
            if predicate(line):
                return line

    def rest(self) -> list[str]:
        """Every line left, once the stream has ended."""
        out = []
        while (line := self.queue.get(timeout=DEADLINE)) is not None:
            out.append(line)
        self.seen += out
        return out


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> None:
    """End our child `proc` (by its pid) and close its pipes."""
    end_process(proc, sig)
    for stream in (proc.stdout, proc.stderr):
        if stream is not None:
            stream.close()


def in_a_terminal(env: dict[str, str], columns: int, *args: str) -> str:
    """`fleetbus ARGS` with stdout on a pseudo-terminal `columns` wide; what it printed."""
    import fcntl
    import termios

    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 40, columns, 0, 0))
    proc = subprocess.Popen(
        cli_command(*args),
        env={k: v for k, v in env.items() if k not in ("COLUMNS", "LINES")},
        stdin=subprocess.DEVNULL,
        stdout=follower,
        stderr=subprocess.PIPE,
    )
    os.close(follower)
    out = b""
    try:
        while True:
            try:
                chunk = os.read(leader, 65536)
            except OSError:  # EIO: the terminal's other end is closed
                break
            if not chunk:
                break
            out += chunk
        assert proc.wait(DEADLINE) == 0, proc.stderr.read() if proc.stderr else ""
    finally:
        os.close(leader)
        end_process(proc)
        if proc.stderr:
            proc.stderr.close()
    return out.decode().replace("\r\n", "\n")


# -- the acceptance: dispatch, status, logs -f -------------------------------------------------
@pytest.mark.slow
def test_dispatch_then_status_then_logs_follow(cli: CLI, env: dict[str, str]) -> None:
    run_id = dispatch(cli, "demo/w1", "sleep 1; echo hi")
    out = ok(cli("status"))
    lines = out.splitlines()
    assert lines[0].startswith("dispatch open"), out
    row = [line for line in lines if line.startswith(run_id)]
    assert len(row) == 1, out
    assert row[0].split()[1:4] in (
        ["fake", "demo/w1", "running"],
        ["fake", "demo/w1", "completed"],
    ), row
    assert re.search(r"running \d+s|\d+s ago", row[0]), row
    assert re.match(r"lane\s+running$", lines[lines.index("") + 1]), out
    assert any(re.match(r"fake\s+\d+/4$", line) for line in lines), out

    logs = popen(env, "logs", run_id, "-f")
    try:
        out, err = logs.communicate(timeout=DEADLINE)
    finally:
        stop(logs)
    assert logs.returncode == 0, err
    assert "hi" in out.splitlines(), out
    assert f"run {run_id} completed, exit 0" in err
    assert run_status(cli, run_id)["status"] == "completed", "logs -f returned before the end"


@pytest.mark.slow
def test_logs_follow_prints_as_the_run_writes(cli: CLI, env: dict[str, str], home: Path) -> None:
    gate = home / "workspaces" / "demo" / "follow" / "gate"  # `wait` takes a workspace path
    run_id = dispatch(cli, "demo/follow", "echo first; wait gate; echo second")
    logs = popen(env, "logs", run_id, "--follow")
    try:
        out = Lines(logs.stdout)
        out.until(lambda line: line == "first")
        assert logs.poll() is None, "logs -f ended while the run still runs"
        gate.touch()
        out.until(lambda line: line == "second")
        assert logs.wait(DEADLINE) == 0
        assert "fake agent done" in out.rest() + out.seen
    finally:
        gate.touch()
        stop(logs)


def test_logs_of_an_unknown_run(cli: CLI) -> None:
    proc = cli("logs", "r-nothing")
    assert proc.returncode == 1, proc
    assert "no run 'r-nothing'" in one_line_error(proc)
    assert proc.stdout == ""


@pytest.mark.slow
def test_logs_reads_the_log_file_only_never_a_link(cli: CLI, tmp_path: Path) -> None:
    run_id = dispatch(cli, "demo/link", "echo mine")
    run = ended(cli, run_id)
    assert ok(cli("logs", run_id)).splitlines()[1] == "mine"
    secret = tmp_path / "secret"
    secret.write_text("not for the log\n")
    log = Path(run["log"])
    log.unlink()
    log.symlink_to(secret)
    proc = cli("logs", run_id)
    assert proc.returncode == 1, proc
    assert str(log) in one_line_error(proc)
    assert "not for the log" not in proc.stdout


@pytest.mark.slow
def test_logs_json(cli: CLI) -> None:
    run_id = dispatch(cli, "demo/json", "echo in json")
    ended(cli, run_id)
    data = json.loads(ok(cli("logs", run_id, "--json")))
    assert data["run"]["run_id"] == run_id and "in json\n" in data["output"]
    proc = cli("logs", run_id, "--json", "-f")
    assert proc.returncode == 2 and "--json" in one_line_error(proc)


# -- kill, freeze, unfreeze ------------------------------------------------------------------
def test_kill_needs_exactly_one_selector(cli: CLI) -> None:
    for argv, got in (
        (["kill"], "got none"),
        (["kill", "r1", "--all"], "got RUN_ID and --all"),
        (["kill", "--agent", "fake", "--workspace", "demo/w1"], "got --agent and --workspace"),
    ):
        proc = cli(*argv)
        assert proc.returncode == 2, proc
        err = one_line_error(proc)
        assert "exactly one of RUN_ID, --agent A, --workspace W or --all" in err and got in err
    assert not json.loads(ok(cli("status", "--json")))["frozen"], "a refused kill changed things"


@pytest.mark.slow
def test_kill_of_an_ended_run_changes_nothing(cli: CLI) -> None:
    run_id = dispatch(cli, "demo/over", "echo done")
    assert ended(cli, run_id)["status"] == "completed"
    proc = cli("kill", run_id)
    assert proc.returncode == 1, proc
    assert one_line_error(proc) == f"error: run {run_id} already ended (completed): nothing to kill"
    assert run_status(cli, run_id)["status"] == "completed"
    assert not json.loads(ok(cli("status", "--json")))["frozen"]
    proc = cli("kill", "r-nothing")
    assert proc.returncode == 1 and "no run 'r-nothing'" in one_line_error(proc)


@pytest.mark.slow
def test_kill_says_what_it_killed_and_cancelled(cli: CLI) -> None:
    running = dispatch(cli, "demo/busy", "wait gate")
    queued = dispatch(cli, "demo/busy", "echo later")
    assert run_status(cli, queued)["status"] == "queued"
    out = ok(cli("kill", "--workspace", "demo/busy"))
    assert out.splitlines() == [
        f"killed 1 running run: {running}",
        f"cancelled 1 queued run: {queued}",
    ], out
    assert {run_status(cli, r)["status"] for r in (running, queued)} == {"cancelled"}
    assert (
        ok(cli("kill", "--agent", "fake"))
        == "nothing to kill: no run of agent fake is running or queued\n"
    )
    result = json.loads(ok(cli("kill", "--all", "--json")))
    assert result == {"killed": 0, "cancelled": 0, "frozen": True}


@pytest.mark.slow
def test_freeze_and_unfreeze(cli: CLI) -> None:
    assert ok(cli("freeze")).startswith("dispatch frozen: 0 running go on, 0 queued wait")
    assert ok(cli("status")).splitlines()[0].startswith("dispatch FROZEN")
    run_id = dispatch(cli, "demo/cold", "echo thawed")
    assert "frozen" in ok(cli("status"))
    assert run_status(cli, run_id)["status"] == "queued"
    assert ok(cli("unfreeze")).startswith("dispatch open:")
    assert ended(cli, run_id)["status"] == "completed"
    assert json.loads(ok(cli("freeze", "--json")))["frozen"] is True
    assert json.loads(ok(cli("unfreeze", "--json")))["frozen"] is False


# -- status ----------------------------------------------------------------------------------
@pytest.mark.slow
def test_status_into_a_pipe_cuts_nothing(cli: CLI) -> None:
    workspace = "demo/" + "a" * 90 + "/" + "b" * 90
    question = "Which of these should the migration target? " * 8
    dispatch(cli, workspace, "echo long")
    asked = dispatch(cli, "demo/asks", f"question {question.strip()}")
    assert ended(cli, asked)["status"] == "blocked"
    out = ok(cli("status", COLUMNS="40"))
    assert workspace in out and question.strip() in out, out
    assert "…" not in out
    data = json.loads(ok(cli("status", "--json", "--workspace", "demo/asks")))
    assert [r["run_id"] for r in data["runs"]] == [asked]
    assert data["runs"][0]["question"] == question.strip()
    filtered = ok(cli("status", "--status", "blocked"))
    assert asked in filtered and workspace not in filtered


@pytest.mark.slow
def test_status_on_a_terminal_fits_its_width(cli: CLI, env: dict[str, str]) -> None:
    workspace = "demo/" + "a" * 90 + "/" + "b" * 90
    run_id = dispatch(cli, workspace, "echo long")
    ended(cli, run_id)
    out = in_a_terminal(env, 80, "status")
    assert all(len(line) <= 80 for line in out.splitlines()), out
    row = next(line for line in out.splitlines() if line.startswith(run_id))
    assert "demo/aaa" in row and "…" in row and workspace not in row


def test_status_shows_the_lanes_of_installed_agents(cli: CLI, home: Path) -> None:
    config = home.parent / "fleetbus.yaml"
    config.write_text("agents:\n  ghost:\n    command: [no-such-program-here, '{prompt}']\n")
    out = ok(cli("status", FLEETBUS_CONFIG=str(config)))
    assert out.splitlines()[0] == "dispatch open; no pool backs off"
    assert "queue: empty" in out and "no runs yet" in out
    lanes = [line.split()[0] for line in out.split("\n\n")[1].splitlines()[1:]]
    every = json.loads(ok(cli("status", "--json", FLEETBUS_CONFIG=str(config))))["lanes"]
    assert every["ghost"]["installed"] is False and every["fake"]["installed"] is True
    assert every["total"]["installed"] is None
    shown = sorted(a for a, lane in every.items() if lane["installed"] and ":" not in a)
    assert lanes == ["total", *shown], out
    assert "ghost" not in lanes and "fake" in lanes


# -- tail ------------------------------------------------------------------------------------
@pytest.mark.slow
def test_tail_prints_each_event_once_with_its_sequence_number(cli: CLI) -> None:
    run_id = dispatch(cli, "demo/tail", "echo hi")
    ended(cli, run_id)
    lines = ok(cli("tail", "--since", "0", "--max", "2")).splitlines()
    assert len(lines) == 2, lines
    first, second = (re.match(r"#(\d+) \d\d:\d\d:\d\d (.*)$", line) for line in lines)
    assert first and second, lines
    assert first.group(2) == f"[agent.status] fake started demo/tail (run {run_id})"
    assert second.group(2).startswith("[agent.status] fake finished demo/tail: completed")
    # the number is what --since takes
    after = ok(cli("tail", "--since", first.group(1), "--max", "1"))
    assert after == lines[1] + "\n"
    # the runner's own messages, readable when no channel event says the same
    own = ok(cli("tail", "--since", "0", "--max", "1", "--topic", "runner.*")).splitlines()
    assert re.fullmatch(rf"#\d+ \S+ fake started demo/tail \(run {run_id}, pid \d+\)", own[0])
    envelopes = [
        json.loads(x) for x in ok(cli("tail", "--since", "0", "--max", "2", "--json")).splitlines()
    ]
    assert [e["topic"] for e in envelopes] == ["runner.run_started", "channel"]
    assert envelopes[0]["seq"] < envelopes[1]["seq"]


@pytest.mark.slow
def test_tail_says_when_the_hub_goes_away(cli: CLI, env: dict[str, str]) -> None:
    tail = popen(env, "tail")
    try:
        err = Lines(tail.stderr)
        err.until(lambda line: "listening" in line)
        ok(cli("stop"))
        line = err.until(lambda line: line.startswith("error:"))
        assert "went away" in line and "--follow" in line
        assert tail.wait(DEADLINE) == 2
    finally:
        stop(tail)


@pytest.mark.slow
def test_tail_follow_goes_on_with_the_next_hub(cli: CLI, env: dict[str, str]) -> None:
    ok(cli("call", "hub.ping"))
    tail = popen(env, "tail", "--follow")
    try:
        err, out = Lines(tail.stderr), Lines(tail.stdout)
        err.until(lambda line: "listening" in line)
        first = dispatch(cli, "demo/before", "echo one")
        out.until(lambda line: "fake finished demo/before" in line)
        ok(cli("stop"))
        err.until(lambda line: "waiting for the next one" in line)
        assert tail.poll() is None, "tail --follow ended with the hub"
        second = dispatch(cli, "demo/after", "echo two")  # starts the next hub
        out.until(lambda line: f"fake started demo/after (run {second})" in line)
        out.until(lambda line: "fake finished demo/after" in line)
        assert [first in line for line in out.seen].count(True) == 1, out.seen
        assert sum("demo/before" in line for line in out.seen) == 2, out.seen  # nothing twice
    finally:
        stop(tail, signal.SIGINT)


# -- tasks -----------------------------------------------------------------------------------
@pytest.mark.slow
def test_tasks_task_and_answer(cli: CLI, source_repo: Path) -> None:
    payload = {"repo": str(source_repo), "task": "ask which colour?; write c.txt x; commit c"}
    task_id = json.loads(
        ok(cli("call", "agentic.dispatch", json.dumps({**payload, "agent": "fake"})))
    )["task_id"]

    def state() -> str:
        return str(json.loads(ok(cli("task", task_id, "--json")))["status"])

    assert wait_for(lambda: state() == "blocked", DEADLINE), state()
    listing = ok(cli("tasks")).splitlines()
    assert listing[0] == "tasks: 1 blocked (1 in all)"
    assert listing[2].split()[:3] == [task_id, "blocked", "fake"], listing
    assert listing[3].strip() == "question: which colour?"
    detail = ok(cli("task", task_id))
    assert detail.startswith(f"task {task_id}: blocked, fake")
    assert "  question:  which colour?" in detail.splitlines(), detail
    assert f"answer it: fleetbus answer {task_id} TEXT" in detail

    out = ok(cli("answer", task_id, "blue,", "please"))
    assert out.startswith(f"task {task_id} resumed: "), out
    assert wait_for(lambda: state() == "completed", DEADLINE), state()
    detail = ok(cli("task", task_id))
    assert "  answer:    blue, please" in detail.splitlines(), detail
    assert len(re.findall(r"^    #\d+ ", detail, re.M)) == 2, detail

    proc = cli("answer", task_id, "again")
    assert proc.returncode == 1 and "not blocked" in one_line_error(proc)
    proc = cli("task", "t-nothing")
    assert proc.returncode == 1 and "no task 't-nothing'" in one_line_error(proc)
    assert json.loads(ok(cli("tasks", "--json")))["counts"]["completed"] == 1


# -- actions ---------------------------------------------------------------------------------
def test_actions_shows_whole_descriptions(cli: CLI, env: dict[str, str]) -> None:
    items = json.loads(ok(cli("actions", "--json")))
    lines = ok(cli("actions")).splitlines()
    assert lines[0].split() == ["action", "plugin", "flags", "description"]
    for action in items:
        (line,) = [ln for ln in lines if ln.split()[:1] == [action["name"]]]
        assert line.endswith(" ".join(action["description"].split())), line
    # on a terminal they wrap; every word is still there
    words = in_a_terminal(env, 100, "actions").split()
    kill = next(a for a in items if a["name"] == "runner.kill")
    text = " ".join(words)
    assert " ".join(kill["description"].split()) in text


# -- the home ----------------------------------------------------------------------------------
def test_a_new_home_and_its_new_parents_are_private(tmp_path: Path) -> None:
    home = Home(tmp_path / "new" / "deeper" / "home")
    home.ensure()
    for path in (tmp_path / "new", tmp_path / "new" / "deeper", home.root):
        assert stat.S_IMODE(path.stat().st_mode) == 0o700, path


@pytest.mark.slow
def test_demo_leaves_a_private_home(tmp_path: Path, env: dict[str, str]) -> None:
    home = tmp_path / "demo-home"
    proc = subprocess.run(
        cli_command("demo"),
        env={**env, "FLEETBUS_HOME": str(home)},
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "demo").stat().st_mode) == 0o700
    # piped, its lines are not wrapped at 80 columns: the actions line is whole
    actions = next(line for line in proc.stdout.splitlines() if "actions:" in line)
    assert len(actions) > 80 and "runner.dispatch" in actions, actions


# -- fast to start, and the same through both CLIs ------------------------------------------------
def loaded(tmp_path: Path, env: dict[str, str], *args: str) -> tuple[int, list[str]]:
    """(exit status, heavy modules loaded) of `fleetbus ARGS`."""
    proc, heavy = run_loaded(tmp_path, env, *args)
    return proc.returncode, heavy


@pytest.mark.slow
def test_people_commands_load_no_heavy_library(tmp_path: Path, env: dict[str, str]) -> None:
    for args, code in (
        (("status",), 0),  # starts the hub
        (("status", "--json", "--agent", "fake"), 0),
        (("dispatch", "fake", "demo/light", "echo light"), 0),
        (("logs", "r-nothing"), 1),
        (("kill",), 2),
        (("freeze",), 0),
        (("unfreeze",), 0),
        (("tasks",), 0),
        (("task", "t-nothing"), 1),
        (("actions",), 0),
        (("tail", "--since", "0", "--max", "1"), 0),
    ):
        status, heavy = loaded(tmp_path, env, *args)
        assert heavy == [], f"`fleetbus {' '.join(args)}` loaded {heavy}"
        assert status == code, args
    # the check sees them when they are loaded
    status, heavy = loaded(tmp_path, env, "status", "--help")
    assert status == 0 and "click" in heavy


@pytest.mark.slow
def test_same_answers_as_the_click_cli(env: dict[str, str]) -> None:
    def run(argv: list[str]) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            argv, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=60
        )

    for args in (
        ["status"],
        ["kill"],
        ["kill", "r1", "--agent", "fake"],
        ["kill", "r-nothing"],
        ["logs", "r-nothing"],
        ["dispatch", "nobody", "demo/w", "x"],
        ["freeze"],
        ["unfreeze", "--json"],
        ["tasks"],
        ["task", "t-nothing"],
        ["answer", "t-nothing", "yes"],
        ["actions", "--exposed"],
    ):
        fast = run(cli_command(*args))
        slow = run([sys.executable, "-c", CLICK, *args])
        for name in ("returncode", "stdout", "stderr"):
            a, b = getattr(fast, name), getattr(slow, name)
            assert a == b, f"fleetbus {args}: {name} differs:\nfast:  {a!r}\nclick: {b!r}"


@pytest.mark.slow
def test_embedded(cli: CLI) -> None:
    out = ok(cli("--embedded", "status"))
    assert out.startswith("dispatch open; no pool backs off"), out
    proc = cli("--embedded", "kill")
    assert proc.returncode == 2 and "exactly one of" in one_line_error(proc)


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["status"], people.Status()),
        (
            ["status", "--agent", "fake", "--status=queued", "--workspace", "a/b", "--limit", "5"],
            people.Status("fake", "queued", "a/b", 5),
        ),
        (["logs", "r1", "-f"], people.Logs("r1", True)),
        (["logs", "--json", "r1"], people.Logs("r1", False, True)),
        (
            ["dispatch", "fake", "a/b", "sleep", "1;", "echo", "--priority", "high", "--", "-x"],
            people.Dispatch("fake", "a/b", ("sleep", "1;", "echo", "-x"), "high"),
        ),
        (
            ["dispatch", "fake", "a/b", "-", "--mode", "followup"],
            people.Dispatch("fake", "a/b", ("-",), None, "followup"),
        ),
        (["kill"], people.Kill()),
        (["kill", "r1", "--all"], people.Kill("r1", everything=True)),
        (["freeze", "--json"], people.Freeze(True)),
        (["unfreeze"], people.Unfreeze()),
        (["tasks", "--status", "blocked"], people.Tasks("blocked")),
        (["task", "t1"], people.Task("t1")),
        (["answer", "t1", "blue", "please"], people.Answer("t1", ("blue", "please"))),
        (["actions", "--exposed"], people.Actions(True)),
        (["tail", "-f", "--json"], fastcli.Tail((), (), True, None, None, True)),
    ],
)
def test_parse_takes(argv: list[str], expected: object) -> None:
    assert fastcli.parse(argv) == (None, expected)


@pytest.mark.parametrize(
    "argv",
    [
        ["status", "--help"],
        ["status", "extra"],
        ["status", "--limit", "many"],
        ["status", "--status", "asleep"],
        ["logs"],
        ["logs", "r1", "r2"],
        ["dispatch", "fake", "a/b"],
        ["dispatch", "fake", "a/b", "x", "--priority", "urgent"],
        ["dispatch", "fake", "a/b", "x", "--mode"],
        ["kill", "r1", "r2"],
        ["freeze", "now"],
        ["tasks", "--status", "queued"],
        ["task"],
        ["answer", "t1"],
        ["actions", "--all"],
    ],
)
def test_parse_leaves_to_click(argv: list[str]) -> None:
    assert fastcli.parse(argv) is None


# -- formatting --------------------------------------------------------------------------------
def test_times_and_tables() -> None:
    assert [people.span(s) for s in (0, 59, 61, 3601, 90000)] == [
        "0s",
        "59s",
        "1m01s",
        "1h00m",
        "1d01h",
    ]
    assert [people.ago(s) for s in (5, 130, 7300, 200000)] == [
        "5s ago",
        "2m ago",
        "2h ago",
        "2d ago",
    ]
    rows = [["r1", "x" * 40, "note " * 10]]
    assert (
        people.table(["a", "b", "c"], rows, None)[1]
        == "r1  " + "x" * 40 + "  " + ("note " * 10).strip()
    )
    fitted = people.table(["a", "b", "c"], rows, 50, flexible=(2, 1))
    assert all(len(line) <= 50 for line in fitted) and fitted[1].startswith("r1  ")
    assert people.clean("a\x1b[31mred\x1b[0m\x07\tb\n") == "ared\tb\n"
