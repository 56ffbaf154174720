"""Process helpers for tests: wait on a condition, tell live processes from zombies,
and clean up the agents a test left running.

Waiting polls every 20 ms up to a deadline: a test never sleeps a fixed time.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil


def wait_for(predicate: Callable[[], object], timeout: float = 30.0) -> bool:
    """Poll `predicate` every 20 ms until it is true (True) or `timeout` passes (False)."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.02)


def alive(pid: int) -> bool:
    """True while `pid` runs; a zombie counts as gone (nobody may reap a detached process)
    once its whole thread group has exited. A SIGKILLed process's main thread turns zombie
    while its other threads are still exiting, holding its files: a killed hub's socket
    still takes connections then, and resets them a moment later."""
    try:
        if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
            return True
    except psutil.NoSuchProcess:
        return False
    try:
        return len(os.listdir(f"/proc/{pid}/task")) > 1
    except OSError:
        return False


def group_members(pgid: int) -> list[int]:
    """Live (non-zombie) processes of process group `pgid`."""
    members = []
    for proc in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError, PermissionError):
            if proc.info["status"] != psutil.STATUS_ZOMBIE and os.getpgid(proc.pid) == pgid:
                members.append(proc.pid)
    return members


def live_groups() -> set[int]:
    """Process groups with at least one live (non-zombie) process."""
    groups = set()
    for proc in psutil.process_iter(["status"]):
        with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError, PermissionError):
            if proc.info["status"] != psutil.STATUS_ZOMBIE:
                groups.add(os.getpgid(proc.pid))
    return groups


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def end_process(proc: subprocess.Popen[Any], sig: int = signal.SIGTERM, wait: float = 10) -> None:
    """Send `sig` to our child `proc` (if it still runs) and reap it; SIGKILL after `wait` s."""
    if proc.poll() is not None:
        return
    os.kill(proc.pid, sig)
    try:
        proc.wait(wait)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()


def run_pid(path: Path) -> int | None:
    """The pid in a run's pid file (its first word; the rest is the wrapper's stat line)."""
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def reap_runs(home: Path) -> None:
    """Kill what is left of every run of `home` (by the pids its wrapper recorded), checking
    that each pid still belongs to that run before signalling it."""
    for pid_file in (home / "runs").glob("*/pid"):
        pid = run_pid(pid_file)
        try:
            if pid is not None and str(pid_file.parent) in " ".join(psutil.Process(pid).cmdline()):
                kill_group(pid)
        except psutil.Error:
            continue


def one_line_error(proc: subprocess.CompletedProcess[str]) -> str:
    """The command's stderr, asserted to be one clear line: no traceback, no internal error."""
    err = proc.stderr.strip()
    assert err, f"nothing on stderr (stdout: {proc.stdout!r})"
    assert "Traceback" not in err, err
    assert "internal error" not in err, err
    assert len(err.splitlines()) == 1, f"expected one line on stderr, got:\n{err}"
    return err
