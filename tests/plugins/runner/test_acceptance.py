"""The runner issue's "Accepted when", done the way a new user does it: a config file of
their own agents, and `fleetbus call runner.*` from a terminal (a real `fleetbus` process,
the hub it autostarts, real agent processes, real SQLite).

The only non-CLI piece is a watcher that polls `runner.status` over the hub's socket every
20 ms (the CLI takes ~0.4 s per call) to check the lanes at every moment.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread
import psutil
import pytest

from fleetbus.bus.client import HubClient
from fleetbus.bus.errors import BusError
from fleetbus.bus.lock import read_pid
from fleetbus.bus.paths import Home
from fleetbus.testing.hub import cli_command
from fleetbus.testing.processes import alive, live_groups, one_line_error, run_pid, wait_for

Cli = Callable[..., subprocess.CompletedProcess[str]]
DEADLINE = 30.0
SAMPLE_PERIOD = 0.02  # an observer samples this often until told to stop

CONFIG = """\
agents:
  sleepy:
    command: ["sh", "-c", "sleep 1; echo done", "{prompt}"]
    prompt: arg
    concurrency: 2
  long:
    command: ["sh", "-c", "sleep 60", "{prompt}"]
    prompt: arg
  sleeper3:
    command: ["sh", "-c", "echo started >> starts.log; sleep 3; echo done", "{prompt}"]
    prompt: arg
    concurrency: 3
"""


# -- helpers ---------------------------------------------------------------------------------
def read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def ok_json(proc: subprocess.CompletedProcess[str]) -> Any:
    assert proc.returncode == 0, f"exit {proc.returncode}: {proc.stderr}"
    return json.loads(proc.stdout)


def status(cli: Cli) -> dict[str, Any]:
    result: dict[str, Any] = ok_json(cli("call", "runner.status", '{"limit": 100}'))
    return result


def by_id(st: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {r["run_id"]: r for r in st["runs"]}


def dispatch_json(agent: str, prompt: str, workspace: str, **extra: str) -> str:
    return json.dumps({"agent": agent, "prompt": prompt, "workspace": workspace, **extra})


class Watcher:
    """Polls `runner.status` over the socket every 20 ms in a thread and keeps the highest
    counts it saw (reconnecting while no hub answers)."""

    def __init__(self, home: Path, agent: str) -> None:
        self.socket = Home(home).socket
        self.agent = agent
        self.max_running = 0
        self.max_lane = 0
        self.max_queued = 0
        self.samples = 0
        self.failure: BaseException | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="status watcher", daemon=True)

    def __enter__(self) -> Watcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(20)
        assert self.failure is None, f"the watcher failed: {self.failure!r}"

    def _run(self) -> None:
        try:
            anyio.run(self._main)
        except BaseException as e:  # reported on exit
            self.failure = e

    async def _main(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(BusError, OSError, TimeoutError):
                async with HubClient.open(self.socket) as client:
                    while not self._stop.is_set():
                        with anyio.fail_after(5):
                            st = await client.perform("runner.status", {"limit": 0})
                        self.samples += 1
                        self.max_running = max(self.max_running, st["running"])
                        self.max_queued = max(self.max_queued, st["queued"])
                        lane = st["lanes"].get(self.agent, {"running": 0})
                        self.max_lane = max(self.max_lane, lane["running"])
                        await anyio.to_thread.run_sync(self._stop.wait, SAMPLE_PERIOD)
            await anyio.to_thread.run_sync(self._stop.wait, SAMPLE_PERIOD)


# -- fixtures --------------------------------------------------------------------------------
@pytest.fixture
def user(home: Path, env: dict[str, str], cli: Cli) -> Iterator[Cli]:
    """`fleetbus` with the user's own config file ($FLEETBUS_CONFIG); runs ended after."""
    config = home.parent / "fleetbus.yaml"
    config.write_text(CONFIG)
    env["FLEETBUS_CONFIG"] = str(config)  # the `cli` fixture shares this dict
    yield cli
    runs = {pid for f in (home / "runs").glob("*/pid") if (pid := run_pid(f)) is not None}
    groups = runs & live_groups()
    for pgid in groups:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)
    assert wait_for(lambda: not groups & live_groups(), 10), "run processes survived SIGKILL"


# -- lanes -----------------------------------------------------------------------------------
def test_six_dispatches_never_run_more_than_the_lane_and_all_complete(
    user: Cli, home: Path, env: dict[str, str]
) -> None:
    assert status(user)["lanes"]["sleepy"] == {
        "running": 0,
        "limit": 2,
        "installed": True,
    }  # autostarts
    with Watcher(home, "sleepy") as watch:
        # six terminals dispatching at once
        procs = [
            subprocess.Popen(
                cli_command(
                    "call",
                    "runner.dispatch",
                    dispatch_json("sleepy", f"task {n}", f"core/app/t{n}"),
                ),
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            )
            for n in range(1, 7)
        ]
        results = []
        try:
            for p in procs:
                out, err = p.communicate(timeout=60)
                assert p.returncode == 0, err
                results.append(json.loads(out))
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
                p.wait(10)
        for r in results:
            assert r["status"] in ("running", "queued"), r
            if r["status"] == "queued":
                assert "lane full" in r["reason"], r
                assert r["queue_position"] >= 1, r
        ids = {r["run_id"] for r in results}
        assert len(ids) == 6

        def done() -> bool:
            return bool(status(user)["completed"] == 6)

        assert wait_for(done), status(user)
    assert watch.samples > 10, watch.samples
    assert watch.max_running <= 2, f"{watch.max_running} runs at once with concurrency 2"
    assert watch.max_lane <= 2, watch.max_lane
    assert watch.max_running == 2 and watch.max_queued >= 1, "the lane was never full"

    st = status(user)
    runs = by_id(st)
    assert set(runs) == ids
    for run in runs.values():
        assert (run["status"], run["exit_code"]) == ("completed", 0), run
        assert Path(run["log"]).read_text() == "done\n"
    assert (st["running"], st["queued"], st["total"]) == (0, 0, 6), st
    # one at a time per slot: at no moment did three runs overlap
    spans = sorted((r["started_at"], r["ended_at"]) for r in runs.values())
    for n, (start, _) in enumerate(spans):
        overlapping = sum(1 for s, e in spans if s <= start < e)
        assert overlapping <= 2, f"run {n} started while {overlapping} ran: {spans}"


# -- freeze ----------------------------------------------------------------------------------
def test_stop_freezes_and_start_lets_the_queued_run_go(user: Cli) -> None:
    assert ok_json(user("call", "runner.stop"))["frozen"] is True
    queued = ok_json(
        user("call", "runner.dispatch", dispatch_json("sleepy", "task f", "core/app/frozen"))
    )
    assert (queued["status"], queued["reason"]) == ("queued", "frozen"), queued
    assert queued["queue_position"] == 1, queued
    # a poke does not start it, and status says why it waits
    assert ok_json(user("call", "runner.poke"))["queued"] == 1
    st = status(user)
    run = by_id(st)[queued["run_id"]]
    assert (st["frozen"], run["status"], run["reason"]) == (True, "queued", "frozen"), st

    started = ok_json(user("call", "runner.start"))
    assert started["frozen"] is False, started
    run = by_id(status(user))[queued["run_id"]]
    assert run["status"] in ("running", "completed"), run

    def ended() -> bool:
        return by_id(status(user))[queued["run_id"]]["status"] not in ("queued", "running")

    assert wait_for(ended)
    run = by_id(status(user))[queued["run_id"]]
    assert (run["status"], run["exit_code"]) == ("completed", 0), run


# -- kill ------------------------------------------------------------------------------------
def test_kill_ends_a_long_run_and_its_whole_process_group(user: Cli) -> None:
    run = ok_json(user("call", "runner.dispatch", dispatch_json("long", "task l", "core/app/long")))
    assert run["status"] == "running", run
    pgid = by_id(status(user))[run["run_id"]]["pid"]
    assert pgid is not None and alive(pgid)
    assert os.getpgid(pgid) == pgid, "the run must lead its own process group"
    # the agent itself (sleep 60) runs under the wrapper, in the same group
    assert wait_for(lambda: psutil.Process(pgid).children(recursive=True))

    killed = ok_json(user("call", "runner.kill", json.dumps({"run_id": run["run_id"]})))
    assert (killed["killed"], killed["cancelled"]) == (1, 0), killed

    def group_gone() -> bool:
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return True
        return False

    assert wait_for(group_gone, 10), f"processes of group {pgid} remain: {pgid in live_groups()}"
    got = by_id(status(user))[run["run_id"]]
    assert got["status"] == "cancelled", got
    assert "runner.kill" in got["reason"], got


# -- restart ---------------------------------------------------------------------------------
def test_hub_sigkilled_during_runs_restarts_and_each_run_ends_once(user: Cli, home: Path) -> None:
    names = [f"core/app/s{n}" for n in range(1, 4)]
    ids = [
        ok_json(user("call", "runner.dispatch", dispatch_json("sleeper3", f"task {n}", name)))
        for n, name in enumerate(names, 1)
    ]
    assert [r["status"] for r in ids] == ["running"] * 3, ids
    logs = [home / "workspaces" / name / "starts.log" for name in names]
    assert wait_for(lambda: all(log.exists() for log in logs))

    hub = read_pid(Home(home).lock)
    assert hub is not None
    os.kill(hub, signal.SIGKILL)
    assert wait_for(lambda: not alive(hub))

    st = status(user)  # starts a new hub
    new_hub = read_pid(Home(home).lock)
    assert new_hub not in (None, hub)
    for r in ids:
        assert by_id(st)[r["run_id"]]["status"] in ("running", "completed"), st

    def all_ended() -> bool:
        return bool(status(user)["completed"] == 3)

    assert wait_for(all_ended), status(user)
    runs = by_id(status(user))
    for r in ids:
        assert (runs[r["run_id"]]["status"], runs[r["run_id"]]["exit_code"]) == ("completed", 0)
    for log in logs:
        assert log.read_text() == "started\n", f"{log}: started more than once"


# -- bad dispatches --------------------------------------------------------------------------
def test_bad_dispatches_exit_1_with_a_clear_message(user: Cli) -> None:
    proc = user("call", "runner.dispatch", dispatch_json("nosuch", "x", "core/app/a"))
    assert proc.returncode == 1, proc
    err = one_line_error(proc)
    assert "nosuch" in err, err
    for known in ("sleepy", "long", "sleeper3", "fake", "shell"):
        assert known in err, f"{known} not named among the known agents: {err}"

    proc = user("call", "runner.dispatch", dispatch_json("sleepy", "x", "../etc"))
    assert proc.returncode == 1, proc
    assert "workspace" in one_line_error(proc)

    proc = user(
        "call", "runner.dispatch", dispatch_json("sleepy", "x", "core/app/b", priority="urgent")
    )
    assert proc.returncode == 1, proc
    err = one_line_error(proc)
    for level in ("critical", "high", "medium", "low"):
        assert level in err, err

    assert proc.stdout == ""
    st = status(user)
    assert st["total"] == 0, "a refused dispatch must not leave a run behind"
