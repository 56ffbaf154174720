"""The `fleetbus` command as a user runs it: real subprocesses, a real hub, socket and SQLite.

Every hub these tests start is recorded in the home's lock file and stopped by the `home`
fixture; other processes are killed by pid in `finally`.
"""

from __future__ import annotations

import json
import os
import queue
import re
import shutil
import signal
import sqlite3
import stat
import subprocess
import threading
import time
from collections.abc import Callable
from importlib.metadata import version as dist_version
from pathlib import Path
from typing import IO

import pytest

from fleetbus.bus.lock import is_locked, read_pid
from fleetbus.bus.paths import Home
from fleetbus.testing.hub import cli_command
from fleetbus.testing.processes import alive, one_line_error, wait_for

Cli = Callable[..., subprocess.CompletedProcess[str]]
NOBODY = 65534
DEADLINE = 20.0


# -- helpers ---------------------------------------------------------------------------------
def hub_pid(home: Path) -> int:
    pid = read_pid(Home(home).lock)
    assert pid is not None, f"no hub pid in {Home(home).lock}"
    return pid


def mode(path: Path) -> int:
    return stat.S_IMODE(path.lstat().st_mode)


def integrity_ok(db: Path) -> None:
    assert db.exists(), db
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    conn.close()


def kill(proc: subprocess.Popen[str]) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(10)


def needs_root() -> None:
    if os.getuid() != 0:
        pytest.skip("needs root to create files owned by another uid")


# -- basics ----------------------------------------------------------------------------------
def test_version(cli: Cli) -> None:
    proc = cli("--version")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == f"fleetbus, version {dist_version('fleetbus')}"


def test_actions_json_and_table(cli: Cli) -> None:
    proc = cli("actions", "--json")
    assert proc.returncode == 0, proc.stderr
    actions = {a["name"]: a for a in json.loads(proc.stdout)}
    assert {"hub.ping", "hub.status", "hub.job"} <= set(actions)
    for name in ("hub.ping", "hub.status", "hub.job"):
        schema = actions[name]["input_schema"]
        assert schema["type"] == "object", schema
        assert actions[name]["plugin"] == "hub"
    assert actions["hub.job"]["input_schema"]["required"] == ["job_id"]
    assert "echo" in actions["hub.ping"]["input_schema"]["properties"]

    table = cli("actions")
    assert table.returncode == 0, table.stderr
    with pytest.raises(ValueError):
        json.loads(table.stdout)
    lines = table.stdout.splitlines()
    assert lines[0].split()[:2] == ["action", "plugin"], table.stdout
    for name in ("hub.ping", "hub.status", "hub.job"):
        assert any(line.split()[:2] == [name, "hub"] for line in lines), table.stdout


def test_call_prints_json_from_argument_and_stdin(cli: Cli) -> None:
    proc = cli("call", "hub.ping", '{"echo":"x"}')
    assert proc.returncode == 0, proc.stderr
    pong = json.loads(proc.stdout)
    assert pong["echo"] == "x"
    assert pong["version"] == dist_version("fleetbus")

    proc = cli("call", "hub.ping", "-", input='{"echo": "from stdin"}\n')
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["echo"] == "from stdin"


def test_exit_codes_and_messages(cli: Cli, home: Path) -> None:
    # unknown action: 1, one line naming it
    proc = cli("call", "nope.nothing", "{}")
    assert proc.returncode == 1, proc
    assert "nope.nothing" in one_line_error(proc)
    assert proc.stdout == ""

    # missing required field: 1, naming the field
    proc = cli("call", "hub.job", "{}")
    assert proc.returncode == 1, proc
    assert "job_id" in one_line_error(proc)

    # unknown field: 1, naming it
    proc = cli("call", "hub.ping", '{"echo": "x", "surprise": 1}')
    assert proc.returncode == 1, proc
    assert "surprise" in one_line_error(proc)

    # not JSON at all: usage error, 2
    proc = cli("call", "hub.ping", "{bad json")
    assert proc.returncode == 2, proc
    assert "JSON" in one_line_error(proc)

    # JSON but not an object: 1
    proc = cli("call", "hub.ping", "[1]")
    assert proc.returncode == 1, proc
    one_line_error(proc)

    # the hub survived all of that, and its database is sound
    proc = cli("call", "hub.ping", '{"echo": "still here"}')
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["echo"] == "still here"
    integrity_ok(Home(home).db)


def test_home_that_is_a_file_is_a_clear_connection_error(cli: Cli, home: Path) -> None:
    home.parent.mkdir(parents=True, exist_ok=True)
    home.write_text("not a directory\n")
    proc = cli("call", "hub.ping", "{}")
    assert proc.returncode == 2, proc
    assert str(home) in one_line_error(proc)


# -- the autostarted hub ---------------------------------------------------------------------
def test_autostarted_hub_is_detached_and_private(cli: Cli, home: Path) -> None:
    proc = cli("call", "hub.status", "{}")
    assert proc.returncode == 0, proc.stderr
    pid = json.loads(proc.stdout)["pid"]
    assert pid == hub_pid(home)
    assert alive(pid), "the hub must outlive the CLI that started it"

    assert os.getsid(pid) != os.getsid(0), "the hub must run in its own session"
    h = Home(home)
    for fd in (0, 1, 2):
        target = os.readlink(f"/proc/{pid}/fd/{fd}")
        assert target in {"/dev/null", str(h.log)}, f"fd {fd} of the hub is {target}"
    assert os.readlink(f"/proc/{pid}/fd/0") == "/dev/null"

    assert mode(home) == 0o700
    assert stat.S_ISSOCK(h.socket.lstat().st_mode)
    assert mode(h.socket) == 0o600
    assert mode(h.db) == 0o600
    assert mode(h.log) == 0o600
    assert mode(h.lock) == 0o600


def test_stop(cli: Cli, home: Path) -> None:
    assert cli("call", "hub.ping", "{}").returncode == 0
    pid = hub_pid(home)

    proc = cli("stop")
    assert proc.returncode == 0, proc.stderr
    assert f"hub {pid} stopped" in proc.stdout, proc.stdout
    # `stop` returns once the hub has let go of the home
    assert not is_locked(Home(home).lock)
    assert not Home(home).socket.exists(), "the hub left its socket behind"
    assert wait_for(lambda: not alive(pid)), f"hub {pid} still runs after `fleetbus stop`"

    proc = cli("stop")
    assert proc.returncode == 0, proc.stderr
    assert "no hub is running" in proc.stdout, proc.stdout


def test_racing_clients_start_one_hub(env: dict[str, str], home: Path) -> None:
    procs = [
        subprocess.Popen(
            cli_command("call", "hub.status", "{}"),
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(4)
    ]
    outputs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=60)
            outputs.append((p.returncode, out, err))
    finally:
        for p in procs:
            kill(p)
    pids = set()
    for code, out, err in outputs:
        assert code == 0, err
        pids.add(json.loads(out)["pid"])
    assert len(pids) == 1, f"several hubs answered: {pids}"
    assert pids == {hub_pid(home)}
    log = Home(home).log.read_text()
    ready = [ln for ln in log.splitlines() if " ready on " in ln]
    assert len(ready) == 1, log
    # the clients agreed on who starts the hub: no second hub was spawned to fail on the lock
    assert "error" not in log.lower(), log


def test_recovers_from_a_killed_hub(cli: Cli, home: Path) -> None:
    proc = cli("call", "hub.status", "{}")
    assert proc.returncode == 0, proc.stderr
    old = json.loads(proc.stdout)["pid"]
    os.kill(old, signal.SIGKILL)
    assert wait_for(lambda: not alive(old))
    h = Home(home)
    assert h.socket.exists(), "a killed hub leaves its socket file"
    assert read_pid(h.lock) == old, "a killed hub leaves its pid in the lock file"

    proc = cli("call", "hub.status", "{}")
    assert proc.returncode == 0, proc.stderr
    new = json.loads(proc.stdout)["pid"]
    assert new != old
    assert alive(new)
    assert read_pid(h.lock) == new


def test_foreground_hub_exits_when_idle(env: dict[str, str], home: Path) -> None:
    started = time.monotonic()
    proc = subprocess.Popen(
        cli_command("hub", "--idle-timeout", "0.5"),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _out, err = proc.communicate(timeout=DEADLINE)
    finally:
        kill(proc)
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, err
    assert " ready on " in err, err
    assert elapsed >= 0.5, "the hub exited before its idle timeout"
    assert not Home(home).socket.exists()
    assert not is_locked(Home(home).lock)


def test_embedded(cli: Cli, home: Path) -> None:
    proc = cli("--embedded", "call", "hub.ping", '{"echo": "inside"}')
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["echo"] == "inside"
    h = Home(home)
    assert not is_locked(h.lock), "an embedded hub must not outlive its command"
    assert read_pid(h.lock) is None
    assert not h.socket.exists()

    assert cli("call", "hub.ping", "{}").returncode == 0  # a shared hub now runs
    pid = hub_pid(home)
    proc = cli("--embedded", "call", "hub.ping", "{}")
    assert proc.returncode == 2, proc
    err = one_line_error(proc)
    assert "another hub" in err and str(pid) in err, err
    assert alive(pid), "a refused --embedded must leave the running hub alone"


def test_second_foreground_hub_is_refused(cli: Cli, home: Path) -> None:
    assert cli("call", "hub.ping", "{}").returncode == 0
    pid = hub_pid(home)
    proc = cli("hub", "--idle-timeout", "0", timeout=DEADLINE)
    assert proc.returncode == 2, proc
    err = one_line_error(proc)
    assert "another hub" in err and str(pid) in err, err
    assert alive(pid)
    assert hub_pid(home) == pid


def _reader(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line)
    lines.put(None)


def test_tail_receives_job_messages(cli: Cli, env: dict[str, str]) -> None:
    tail = subprocess.Popen(
        cli_command("tail", "--max", "2", "--json", "--topic", "bus.job_*"),
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert tail.stderr is not None
        errors: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=_reader, args=(tail.stderr, errors), daemon=True).start()
        seen: list[str] = []
        deadline = time.monotonic() + 10
        while True:
            try:
                line = errors.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                pytest.fail(f"`fleetbus tail` printed no 'listening' line on stderr: {seen}")
            if line is None:
                pytest.fail(f"`fleetbus tail` ended before listening: {seen}")
            seen.append(line)
            if "listening" in line:
                break

        job = cli("call", "--background", "hub.ping", "{}")
        assert job.returncode == 0, job.stderr
        job_id = json.loads(job.stdout)["job_id"]

        out, _ = tail.communicate(timeout=DEADLINE)
        assert tail.returncode == 0, seen
        envelopes = [json.loads(ln) for ln in out.splitlines()]
        assert [e["topic"] for e in envelopes] == ["bus.job_started", "bus.job_completed"]
        assert {e["data"]["job_id"] for e in envelopes} == {job_id}
        assert envelopes[1]["data"]["ok"] is True
        assert envelopes[0]["seq"] < envelopes[1]["seq"]
    finally:
        kill(tail)


# -- configuration errors --------------------------------------------------------------------
def test_broken_manifest_is_one_clear_line_and_no_hub(cli: Cli, home: Path) -> None:
    config = home.parent / "fleetbus.yaml"
    config.write_text('agents: {bad: {command: "not a list"}}\n')
    h = Home(home)

    proc = cli("call", "hub.ping", "{}", FLEETBUS_CONFIG=str(config))
    assert proc.returncode == 2, proc
    err = one_line_error(proc)
    assert str(config) in err and "agents.bad.command" in err, err
    assert not is_locked(h.lock), "a hub that failed to start must not keep running"
    assert not h.socket.exists()

    config.write_text("hub:\n  idle_timeout: 30\n   bad: 1\n")
    proc = cli("call", "hub.ping", "{}", FLEETBUS_CONFIG=str(config))
    assert proc.returncode == 2, proc
    err = one_line_error(proc)
    assert str(config) in err and re.search(r"\bline 3\b", err), err
    assert not is_locked(h.lock)

    config.write_text(
        "hub:\n  idle_timeout: 30\nagents:\n  good:\n    command: [echo, '{prompt}']\n"
    )
    proc = cli("call", "hub.ping", '{"echo": "fixed"}', FLEETBUS_CONFIG=str(config))
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["echo"] == "fixed"
    integrity_ok(h.db)


# -- other users -----------------------------------------------------------------------------
def test_socket_of_another_uid(cli: Cli, home: Path) -> None:
    needs_root()
    home.mkdir(mode=0o700, parents=True)
    sock = Home(home).socket
    sock.touch(mode=0o600)
    os.chown(sock, NOBODY, -1)
    proc = cli("call", "hub.ping", "{}")
    assert proc.returncode == 2, proc
    err = one_line_error(proc)
    assert str(sock) in err and f"uid {NOBODY}" in err, err
    assert sock.exists() and sock.stat().st_uid == NOBODY, "another user's file must be left alone"


def test_home_of_another_uid(cli: Cli, home: Path) -> None:
    needs_root()
    home.mkdir(mode=0o700, parents=True)
    os.chown(home, NOBODY, -1)
    proc = cli("call", "hub.ping", "{}")
    assert proc.returncode == 2, proc
    err = one_line_error(proc)
    assert str(home) in err and f"uid {NOBODY}" in err, err
    assert not Home(home).lock.exists()


PEER = r"""
import json, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
s.settimeout(10)
s.connect(sys.argv[1])
data, closed = b"", False
try:
    s.sendall(b'{"jsonrpc": "2.0", "id": 1, "method": "hello"}\n')
    while not data.endswith(b"\n"):
        chunk = s.recv(65536)
        if not chunk:
            closed = True
            break
        data += chunk
except (ConnectionResetError, BrokenPipeError):
    closed = True
print(json.dumps({"connected": True, "closed": closed, "data": data.decode()}))
"""


def test_peer_of_another_uid_is_refused(cli: Cli, home: Path) -> None:
    needs_root()
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3 another user can run")
    assert cli("call", "hub.ping", "{}").returncode == 0
    sock = Home(home).socket
    # a misconfiguration that lets another user reach the socket
    home.parent.chmod(0o711)
    home.chmod(0o711)
    sock.chmod(0o666)

    proc = subprocess.run(
        [python, "-c", PEER, str(sock)],
        user=NOBODY,
        cwd="/",
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=DEADLINE,
    )
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["connected"]
    lines = [json.loads(ln) for ln in report["data"].splitlines() if ln.strip()]
    assert all("result" not in msg for msg in lines), f"another uid got an answer: {lines}"
    if lines:
        assert "refused" in lines[0]["error"]["message"], lines
    else:
        assert report["closed"], report

    # the hub still serves its own user
    assert cli("call", "hub.ping", "{}").returncode == 0
