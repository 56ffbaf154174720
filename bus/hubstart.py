"""Finding the hub of a home, or starting a detached one: plain blocking code, stdlib only.

The stdio relay (`fleetbus serve`) uses it before it has any event loop, so it imports
nothing heavy; async clients call `ensure_hub_blocking` from a worker thread.
"""

from __future__ import annotations

import os
import socket
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import ConnectionFailed
from .lock import blocking_lock, is_locked
from .paths import Home

if TYPE_CHECKING:
    import subprocess

START_TIMEOUT = 20.0


def check_socket_owner(path: Path) -> None:
    try:
        st = path.stat()
    except FileNotFoundError:
        return
    except NotADirectoryError:
        raise ConnectionFailed(
            f"FLEETBUS_HOME {path.parent} is not a directory; point FLEETBUS_HOME at a directory"
        ) from None
    if st.st_uid != os.getuid():
        raise ConnectionFailed(
            f"the hub socket {path} belongs to uid {st.st_uid}, not to you; "
            "set FLEETBUS_HOME to a directory of your own"
        )


def can_connect(path: Path) -> bool:
    """True when a hub accepts connections on `path` (blocking)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        try:
            sock.connect(os.fspath(path))
        except OSError:
            return False
    return True


def hub_command() -> list[str]:
    return [sys.executable, "-m", "fleetbus.server", "hub"]


def spawn_hub(home: Home, env: Mapping[str, str]) -> subprocess.Popen[bytes]:
    """Start a detached hub: own session, stdin from /dev/null, output to the home's log."""
    import subprocess  # here: a client that finds its hub running never needs it
    import threading

    home.ensure()
    child_env = dict(env)
    child_env["FLEETBUS_HOME"] = str(home.root)
    fd = os.open(home.log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with open(fd, "ab") as log:
        proc = subprocess.Popen(
            hub_command(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            env=child_env,
            cwd=str(home.root),
        )
    # reap it when it exits, so a long-lived client leaves no zombie behind
    threading.Thread(target=proc.wait, daemon=True, name="fleetbus-hub-reaper").start()
    return proc


def log_tail(home: Home, since: int) -> str:
    """The last error line (else the last line) the hub logged after offset `since`."""
    try:
        with open(home.log, "rb") as f:
            f.seek(since)
            lines = [
                ln.strip() for ln in f.read().decode(errors="replace").splitlines() if ln.strip()
            ]
    except OSError:
        return ""
    errors = [ln for ln in lines if "error" in ln.lower()]
    last = (errors or lines or [""])[-1]
    return last.removeprefix("error: ")


def ensure_hub_blocking(
    home: Home, env: Mapping[str, str] = os.environ, timeout: float = START_TIMEOUT
) -> Path:
    """Return the socket of the home's hub, starting a detached hub if none answers.

    Clients racing here start exactly one hub: the spawn lock is held while checking,
    spawning and waiting.
    """
    path = home.socket
    check_socket_owner(path)
    if can_connect(path):
        return path
    home.ensure()
    with blocking_lock(home.spawn_lock):
        if can_connect(path):
            return path
        log_size = home.log.stat().st_size if home.log.exists() else 0
        proc = spawn_hub(home, env)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if can_connect(path):
                return path
            # exited without the lock held by another hub (one started by a client that left
            # before it listened, taking the spawn lock with it: then wait for that one)
            if proc.poll() is not None and not is_locked(home.lock):
                if can_connect(path):
                    return path
                reason = log_tail(home, log_size) or f"exit status {proc.returncode}"
                raise ConnectionFailed(f"the hub failed to start: {reason} (see {home.log})")
            time.sleep(0.02)
        raise ConnectionFailed(f"the hub did not answer within {timeout:g}s (see {home.log})")
