"""Runner restart semantics with real processes: the hub is a real `fleetbus` process that
gets SIGKILLed or stopped while the fake agent runs, and a new hub picks up from SQLite.

"Nothing lost, nothing run twice": runs still alive are adopted (same pid and start time),
runs that ended while the hub was down are settled from the wrapper's `exit` file (or failed
when there is none), the queue survives, and caps hold at every moment.

Every agent a test starts is ended before it returns (`_agents_ended` kills what is left of
each run's process group); hubs are stopped by the `home` fixture.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import psutil
import pytest
from anyio.streams.memory import MemoryObjectReceiveStream

from fleetbus.bus.client import HubClient
from fleetbus.bus.errors import BusError
from fleetbus.bus.lock import read_pid
from fleetbus.bus.paths import Home
from fleetbus.testing.processes import (
    alive,
    group_members,
    kill_group,
    live_groups,
    run_pid,
    wait_for,
)
from fleetbus.testing.pytest_plugin import CLI

Cli = CLI  # the `cli` fixture: runs `fleetbus` with the test's environment
DEADLINE = 30.0
SAMPLE_PERIOD = 0.02  # an observer samples this often until told to stop
FAKE = "fleetbus.testing.fake_agent"


# -- helpers ---------------------------------------------------------------------------------
def read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def call(home: Path, action: str, payload: dict[str, Any] | None = None) -> Any:
    """One action over the hub's socket (the hub must be running)."""

    async def go() -> Any:
        async with HubClient.open(Home(home).socket) as client:
            with anyio.fail_after(20):
                return await client.perform(action, payload or {})

    return anyio.run(go)


def dispatch_many(home: Path, payloads: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Dispatch in order over one connection (fast: no CLI start-up per run)."""

    async def go() -> list[dict[str, Any]]:
        async with HubClient.open(Home(home).socket) as client:
            with anyio.fail_after(30):
                return [await client.perform("runner.dispatch", p) for p in payloads]

    return anyio.run(go)


def cli_json(cli: Cli, *args: str) -> Any:
    proc = cli(*args)
    if proc.returncode != 0:  # what the hub logged tells why (the home is gone after)
        log = Home(Path(cli.env["FLEETBUS_HOME"])).log
        tail = log.read_text(errors="replace")[-4000:] if log.exists() else "(no hub log)"
        pytest.fail(f"fleetbus {' '.join(args)}: {proc.stderr}\nthe hub's log ends:\n{tail}")
    return json.loads(proc.stdout)


def hub_pid(home: Path) -> int:
    pid = read_pid(Home(home).lock)
    assert pid is not None, "no hub is running"
    return pid


def sigkill_hub(home: Path) -> int:
    """SIGKILL the hub of `home` and wait until it is gone; its pid."""
    pid = hub_pid(home)
    os.kill(pid, signal.SIGKILL)
    assert wait_for(lambda: not alive(pid)), f"hub {pid} survived SIGKILL"
    return pid


def stop_hub_cli(cli: Cli, home: Path) -> int:
    pid = hub_pid(home)
    proc = cli("stop")
    assert proc.returncode == 0, proc.stderr
    assert f"hub {pid} stopped" in proc.stdout, proc.stdout
    assert wait_for(lambda: not alive(pid)), f"hub {pid} still runs after `fleetbus stop`"
    return pid


def db_rows(
    home: Path, sql: str = "SELECT * FROM runs ORDER BY seq", *params: Any
) -> list[dict[str, Any]]:
    conn = sqlite3.connect(Home(home).db)
    try:
        conn.row_factory = sqlite3.Row
        return [dict(r) for r in conn.execute(sql, params)]
    finally:
        conn.close()


def db_write(home: Path, sql: str, *params: Any) -> None:
    conn = sqlite3.connect(Home(home).db)
    try:
        with conn:
            changed = conn.execute(sql, params).rowcount
        assert changed == 1, f"{sql!r} changed {changed} rows"
    finally:
        conn.close()


def run_dir(home: Path, run_id: str) -> Path:
    return home / "runs" / run_id


def workspace_dir(home: Path, name: str) -> Path:
    return home / "workspaces" / name


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def runs_by_id(status: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["run_id"]: r for r in status["runs"]}


def fake_agents(marker: str) -> list[int]:
    """Live fake-agent processes (not their sh wrappers) whose prompt carries `marker`."""
    found = []
    for proc in psutil.process_iter(["cmdline", "status"]):
        cmd = proc.info["cmdline"] or []
        if (
            proc.info["status"] != psutil.STATUS_ZOMBIE
            and cmd[1:3] == ["-m", FAKE]
            and any(marker in part for part in cmd)
        ):
            found.append(proc.pid)
    return found


class Watcher:
    """Polls `runner.status` over the socket every 20 ms in a thread, across hub restarts,
    keeping the highest counts seen and every `runner.*` message of each hub (replayed from
    its history on connect, so nothing published before we connected is missed)."""

    def __init__(self, home: Path, agent: str, marker: str | None = None) -> None:
        self.socket = Home(home).socket
        self.agent = agent
        self.marker = marker
        self.max_running = 0  # rows with status running
        self.max_lane = 0  # lanes[agent].running
        self.max_total = 0  # lanes.total.running
        self.max_procs = 0  # live agent processes carrying the marker
        self.samples = 0
        self.hubs: set[int] = set()
        self.events: dict[tuple[int, int], dict[str, Any]] = {}
        self.failure: BaseException | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="status watcher", daemon=True)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(20)

    def check(self) -> None:
        assert self.failure is None, f"the watcher failed: {self.failure!r}"

    def topic(self, name: str, hub: int | None = None) -> list[dict[str, Any]]:
        """The messages of `topic` seen so far (of one hub, or of all), in order."""
        with self._lock:
            items = sorted(self.events.items())
        return [e for (pid, _), e in items if e["topic"] == name and hub in (None, pid)]

    def _run(self) -> None:
        try:
            anyio.run(self._main)
        except BaseException as e:  # reported by check()
            self.failure = e

    async def _main(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(BusError, OSError, TimeoutError, anyio.EndOfStream):
                await self._session()
            await anyio.to_thread.run_sync(self._stop.wait, SAMPLE_PERIOD)

    async def _session(self) -> None:
        async with HubClient.open(self.socket) as client:
            with anyio.fail_after(5):
                pid = int((await client.hello())["pid"])
            self.hubs.add(pid)
            async with client.subscribe(["runner.*"], since=0) as events:
                assert isinstance(events, MemoryObjectReceiveStream)  # read without blocking
                while not self._stop.is_set():
                    with anyio.fail_after(5):
                        st = await client.perform("runner.status", {"limit": 0})
                    self._sample(st)
                    while True:
                        try:
                            env = events.receive_nowait()
                        except anyio.WouldBlock:
                            break
                        with self._lock:
                            self.events[(pid, env["seq"])] = env
                    await anyio.to_thread.run_sync(self._stop.wait, SAMPLE_PERIOD)

    def _sample(self, st: dict[str, Any]) -> None:
        self.samples += 1
        self.max_running = max(self.max_running, st["running"])
        self.max_lane = max(self.max_lane, st["lanes"][self.agent]["running"])
        self.max_total = max(self.max_total, st["lanes"]["total"]["running"])
        if self.marker is not None:
            self.max_procs = max(self.max_procs, len(fake_agents(self.marker)))


# -- fixtures --------------------------------------------------------------------------------
@pytest.fixture(autouse=True)
def _agents_ended(home: Path) -> Iterator[None]:
    """After the test: no process of any run of this home is left (killed by group)."""
    yield
    runs = {pid for f in (home / "runs").glob("*/pid") if (pid := run_pid(f)) is not None}
    groups = runs & live_groups()
    for pgid in groups:
        kill_group(pgid)
    assert wait_for(lambda: not groups & live_groups(), 10), "run processes survived SIGKILL"


def write_config(home: Path, env: dict[str, str], text: str) -> Path:
    path = home.parent / "fleetbus.yaml"
    path.write_text(text)
    env["FLEETBUS_CONFIG"] = str(path)  # the `cli` fixture shares this dict
    return path


def start_hub(cli: Cli, home: Path) -> int:
    proc = cli("call", "hub.ping", "{}")
    assert proc.returncode == 0, proc.stderr
    return hub_pid(home)


def fake(prompt: str, workspace: str) -> dict[str, Any]:
    return {"agent": "fake", "prompt": prompt, "workspace": workspace}


def wait_status(home: Path, run_id: str, want: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
    seen: dict[str, Any] = {}

    def check() -> bool:
        nonlocal seen
        seen = runs_by_id(call(home, "runner.status", {"limit": 1000}))[run_id]
        return want(seen)

    assert wait_for(check), f"run {run_id} never reached the expected state: {seen}"
    return seen


# -- SIGKILL with 5 running and 20 queued ----------------------------------------------------
def test_sigkill_with_full_lanes_and_a_queue_loses_nothing_and_runs_nothing_twice(
    cli: Cli, home: Path, env: dict[str, str]
) -> None:
    write_config(
        home,
        env,
        "dispatch:\n  total_concurrency: 5\nagents:\n  fake:\n    concurrency: 5\n",
    )
    marker = f"marker-{os.getpid()}-{time.monotonic_ns()}"
    first = start_hub(cli, home)
    names = [f"restart/app/t{n:02d}" for n in range(25)]
    # the first five (which start at once) outlive the restart; the queued twenty are short
    payloads = [
        fake(
            f"append starts.log started; sleep {5 if n < 5 else 1}; {marker}",
            name,
        )
        for n, name in enumerate(names)
    ]
    with Watcher(home, "fake", marker) as watch:
        results = dispatch_many(home, payloads)
        assert [r["status"] for r in results] == ["running"] * 5 + ["queued"] * 20, results
        for r in results[5:]:
            assert "lane full" in r["reason"], r
        ids = [r["run_id"] for r in results]
        adopted, queued = ids[:5], ids[5:]
        before = runs_by_id(call(home, "runner.status", {"limit": 1000}))
        pids = {i: before[i]["pid"] for i in adopted}
        assert all(pids.values()), before
        # every first-wave agent has really started before the hub dies
        assert wait_for(
            lambda: all(len(lines(workspace_dir(home, n) / "starts.log")) == 1 for n in names[:5])
        )

        sigkill_hub(home)
        rows = {r["id"]: r for r in db_rows(home)}
        assert sorted(i for i, r in rows.items() if r["status"] == "running") == sorted(adopted)
        assert sorted(i for i, r in rows.items() if r["status"] == "queued") == sorted(queued)
        for i in adopted:
            assert alive(pids[i]), f"run {i} died with the hub"

        # any call restarts the hub; it adopts the five before it answers
        st = cli_json(cli, "call", "runner.status", '{"limit": 1000}')
        second = hub_pid(home)
        assert second != first
        assert (st["running"], st["queued"]) == (5, 20), st
        after = runs_by_id(st)
        for i in adopted:
            assert after[i]["status"] == "running", after[i]
            assert after[i]["pid"] == pids[i], "an adopted run must keep its process"
        assert st["lanes"]["fake"]["running"] == 5, st["lanes"]
        assert st["lanes"]["total"]["running"] == 5, st["lanes"]

        def all_ended() -> bool:
            s = call(home, "runner.status", {"limit": 0})
            return bool(s["completed"] + s["failed"] + s["cancelled"] + s["timeout"] == 25)

        assert wait_for(all_ended, 60), call(home, "runner.status", {"limit": 1000})
        # the completions are published after their commit: wait until the watcher has all
        assert wait_for(lambda: len(watch.topic("runner.run_completed")) >= 25)
    watch.check()

    final = call(home, "runner.status", {"limit": 1000})
    assert final["completed"] == 25, final
    for run in final["runs"]:
        assert (run["status"], run["exit_code"], run["reason"]) == ("completed", 0, ""), run
    for name in names:
        assert lines(workspace_dir(home, name) / "starts.log") == ["started"], name

    # exactly one start and one completion per run, over both hubs
    assert watch.hubs == {first, second}
    started = Counter(e["data"]["run_id"] for e in watch.topic("runner.run_started"))
    completed = Counter(e["data"]["run_id"] for e in watch.topic("runner.run_completed"))
    assert started == Counter(ids), started
    assert completed == Counter(ids), completed
    restarted = {e["data"]["run_id"] for e in watch.topic("runner.run_started", second)}
    assert restarted == set(queued), "the second hub started an adopted run again"
    log = Home(home).log.read_text()
    for i in adopted:
        assert f"adopted run {i} (pid {pids[i]})" in log, log

    # caps held at every moment
    assert watch.samples > 20, watch.samples
    assert watch.max_running <= 5, watch.max_running
    assert watch.max_lane <= 5 and watch.max_total <= 5, (watch.max_lane, watch.max_total)
    assert watch.max_procs <= 5, watch.max_procs
    assert watch.max_running == 5 and watch.max_procs == 5, "the lanes were never full"
    assert fake_agents(marker) == []


# -- runs that ended while the hub was down --------------------------------------------------
def test_exit_while_the_hub_is_down_is_recorded_with_its_code(cli: Cli, home: Path) -> None:
    start_hub(cli, home)
    run = call(home, "runner.dispatch", fake("sleep 1; exit 7", "restart/app/seven"))
    assert run["status"] == "running", run
    rid = run["run_id"]
    sigkill_hub(home)
    exit_file = run_dir(home, rid) / "exit"
    assert wait_for(lambda: exit_file.exists() and read_int(exit_file) is not None)
    assert db_rows(home, "SELECT status FROM runs WHERE id = ?", rid) == [{"status": "running"}]

    st = cli_json(cli, "call", "runner.status", '{"limit": 1000}')
    got = runs_by_id(st)[rid]
    assert (got["status"], got["exit_code"], got["reason"]) == ("failed", 7, "exit 7"), got
    assert got["ended_at"] == pytest.approx(exit_file.stat().st_mtime, abs=0.01)
    assert st["running"] == 0 and st["lanes"]["fake"]["running"] == 0, st


def test_a_question_asked_while_the_hub_is_down_blocks_the_run(cli: Cli, home: Path) -> None:
    start_hub(cli, home)
    name = "restart/app/ask"
    run = call(home, "runner.dispatch", fake("wait .go; question Asked while you were away?", name))
    assert run["status"] == "running", run
    rid = run["run_id"]
    wait_status(home, rid, lambda r: r["pid"] is not None)
    sigkill_hub(home)
    (workspace_dir(home, name) / ".go").touch()
    exit_file = run_dir(home, rid) / "exit"
    assert wait_for(lambda: read_int(exit_file) == 0)

    got = runs_by_id(cli_json(cli, "call", "runner.status", '{"limit": 1000}'))[rid]
    assert (got["status"], got["reason"], got["question"]) == (
        "blocked",
        "question: Asked while you were away?",
        "Asked while you were away?",
    ), got
    assert not (workspace_dir(home, name) / ".fleetbus" / "question.md").exists()
    assert (run_dir(home, rid) / "question.md").read_text() == "Asked while you were away?\n"


def test_process_gone_without_exit_file_is_failed(cli: Cli, home: Path) -> None:
    start_hub(cli, home)
    run = call(
        home, "runner.dispatch", fake("append starts.log started; sleep 30", "restart/app/gone")
    )
    assert run["status"] == "running", run
    rid = run["run_id"]
    pid = wait_status(home, rid, lambda r: r["pid"] is not None)["pid"]
    assert wait_for(lambda: lines(workspace_dir(home, "restart/app/gone") / "starts.log"))
    sigkill_hub(home)

    kill_group(pid)  # the wrapper too: nobody writes the exit file
    assert wait_for(lambda: not group_members(pid))
    assert not (run_dir(home, rid) / "exit").exists()

    st = cli_json(cli, "call", "runner.status", '{"limit": 1000}')
    got = runs_by_id(st)[rid]
    assert got["status"] == "failed", got
    assert got["exit_code"] is None, got
    assert got["reason"] == "process died while the hub was down", got
    assert st["running"] == 0 and st["lanes"]["fake"]["running"] == 0, st
    # the next hub does not run it again either
    assert call(home, "runner.poke")["running"] == 0
    assert lines(workspace_dir(home, "restart/app/gone") / "starts.log") == ["started"]


# -- pid reuse guard -------------------------------------------------------------------------
def test_live_pid_of_another_process_is_not_adopted(cli: Cli, home: Path) -> None:
    start_hub(cli, home)
    run = call(
        home, "runner.dispatch", fake("append starts.log started; sleep 2", "restart/app/reuse")
    )
    assert run["status"] == "running", run
    rid = run["run_id"]
    real = wait_status(home, rid, lambda r: r["pid"] is not None)["pid"]
    stop_hub_cli(cli, home)

    # a process that is alive but is not the run: the pid was reused after a reboot, say
    stranger = subprocess.Popen(["sleep", "30"], start_new_session=True, stdin=subprocess.DEVNULL)
    try:
        pid_file = run_dir(home, rid) / "pid"
        recorded = pid_file.read_text()
        assert recorded.split()[0] == str(real)
        # the pid file now names the stranger, with the real run's start time
        pid_file.write_text(f"{stranger.pid} {recorded.partition(' ')[2]}")
        # let the real run end while the hub is down: its exit file says how
        exit_file = run_dir(home, rid) / "exit"
        assert wait_for(lambda: read_int(exit_file) is not None)

        st = cli_json(cli, "call", "runner.status", '{"limit": 1000}')
        got = runs_by_id(st)[rid]
        assert got["status"] != "running", f"adopted a stranger: {got}"
        assert (got["status"], got["exit_code"]) == ("completed", 0), got
        assert st["running"] == 0 and st["lanes"]["fake"]["running"] == 0, st
        # the stranger is neither tracked nor signalled
        call(home, "runner.poke")
        assert stranger.poll() is None, "the hub signalled a process that is not its run"
        assert alive(stranger.pid)
        assert lines(workspace_dir(home, "restart/app/reuse") / "starts.log") == ["started"]
    finally:
        stranger.kill()
        stranger.wait(10)


# -- a clean stop of the hub -----------------------------------------------------------------
def test_hub_stop_leaves_runs_going_and_the_next_hub_records_them(cli: Cli, home: Path) -> None:
    name = "restart/app/stop"
    start_hub(cli, home)
    run = call(home, "runner.dispatch", fake("append starts.log started; sleep 4", name))
    assert run["status"] == "running", run
    rid = run["run_id"]
    pid = wait_status(home, rid, lambda r: r["pid"] is not None)["pid"]
    assert wait_for(lambda: lines(workspace_dir(home, name) / "starts.log"))
    stop_hub_cli(cli, home)

    assert alive(pid), "stopping the hub killed its run"
    assert len(group_members(pid)) >= 2, "the agent under the wrapper is gone"
    assert not (run_dir(home, rid) / "exit").exists()
    assert db_rows(home, "SELECT status FROM runs WHERE id = ?", rid) == [{"status": "running"}]

    st = cli_json(cli, "call", "runner.status", '{"limit": 1000}')
    got = runs_by_id(st)[rid]
    if got["status"] == "running":  # adopted (unless a slow machine let it end meanwhile)
        assert got["pid"] == pid, got
        assert st["lanes"]["fake"]["running"] == 1, st["lanes"]
    else:
        assert (run_dir(home, rid) / "exit").exists(), got

    got = wait_status(home, rid, lambda r: r["status"] != "running")
    assert (got["status"], got["exit_code"], got["reason"]) == ("completed", 0, ""), got
    assert lines(workspace_dir(home, name) / "starts.log") == ["started"]
    assert "fake agent done" in Path(got["log"]).read_text()


# -- a crash between the claim's commit and the spawn ----------------------------------------
def test_a_claimed_run_whose_agent_never_started_runs_once(cli: Cli, home: Path) -> None:
    """A run is claimed (committed as running) before its process is spawned, and the
    wrapper writes its pid file before the agent starts. A hub that dies between the two
    leaves a running row with no pid file: the agent never ran, so the next hub queues it
    again and it runs exactly once."""
    name = "restart/app/window"
    start_hub(cli, home)
    call(home, "runner.stop")  # keep it queued while the crash is staged
    run = call(home, "runner.dispatch", fake("append starts.log started", name))
    rid = run["run_id"]
    assert run["status"] == "queued", run
    stop_hub_cli(cli, home)
    # the row as the crash leaves it: claimed, but nothing was spawned
    db_write(
        home,
        "UPDATE runs SET status = 'running', started_at = created_at, run_dir = ? WHERE id = ?",
        str(run_dir(home, rid)),
        rid,
    )
    assert not (run_dir(home, rid) / "pid").exists()

    cli_json(cli, "call", "runner.status", "{}")  # a new hub, not frozen
    got = wait_status(home, rid, lambda r: r["status"] not in ("queued", "running"))
    assert (got["status"], got["exit_code"]) == ("completed", 0), got
    assert lines(workspace_dir(home, name) / "starts.log") == ["started"]
