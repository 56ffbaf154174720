"""Test helpers for plugin authors: an embedded hub, and a hub run as a real process.

async with embedded_hub(tmp_path, plugins=[("hello", hello_plugin)]) as hub:
    assert await hub.bus.perform("hello.greet", {"name": "ada"}) ...
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from contextlib import asynccontextmanager, contextmanager
from pathlib import Path
from typing import Any

import anyio

from fleetbus.bus.errors import unwrap_group
from fleetbus.bus.hub import Hub
from fleetbus.bus.lock import read_pid
from fleetbus.bus.paths import Home

from .processes import alive


def isolated_env(
    home: Path, *, config: Path | None = None, base: Mapping[str, str] = os.environ
) -> dict[str, str]:
    """An environment for a hub under `home` that never reads the user's own config."""
    env = {k: v for k, v in base.items() if not k.startswith("FLEETBUS_")}
    env["FLEETBUS_HOME"] = str(home)
    env["XDG_CONFIG_HOME"] = str(home / "xdg-config")
    if config is not None:
        env["FLEETBUS_CONFIG"] = str(config)
    return env


@asynccontextmanager
async def embedded_hub(
    home: Path,
    *,
    plugins: Sequence[tuple[str, object]] = (),
    entry_points: bool = False,
    env: Mapping[str, str] | None = None,
    serve_socket: bool = True,
    **kwargs: Any,
) -> AsyncIterator[Hub]:
    """Run a hub in this process with extra inline plugins; stop it on exit."""
    hub = Hub(
        home,
        inline=plugins,
        entry_points=entry_points,
        env=env if env is not None else isolated_env(home),
        idle_timeout=kwargs.pop("idle_timeout", 0),
        serve_socket=serve_socket,
        **kwargs,
    )
    with unwrap_group():
        async with anyio.create_task_group() as tg:
            await tg.start(hub.run)
            try:
                yield hub
            finally:
                hub.request_stop()


def cli_command(*args: str) -> list[str]:
    """argv running the `fleetbus` CLI of this interpreter."""
    return [sys.executable, "-m", "fleetbus.server", *args]


def stop_hub(home: Path, *, timeout: float = 10.0) -> None:
    """Stop the hub recorded in `home`'s lock file (SIGTERM, then SIGKILL), if it runs."""
    pid = read_pid(Home(home).lock)
    if pid is None:
        return
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, timeout)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if not alive(pid):
                return
            time.sleep(0.02)


@contextmanager
def hub_process(
    home: Path, env: Mapping[str, str], *args: str
) -> Iterator[subprocess.Popen[bytes]]:
    """`fleetbus hub` as a real subprocess; yields once its socket answers, stops it after."""
    from fleetbus.bus.hubstart import can_connect

    proc = subprocess.Popen(
        cli_command("hub", *args),
        env=dict(env),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 20
        sock = Home(home).socket
        while not can_connect(sock):
            if proc.poll() is not None:
                raise RuntimeError(
                    f"hub exited: {proc.stderr.read().decode() if proc.stderr else ''}"
                )
            if time.monotonic() > deadline:
                raise TimeoutError("the hub did not open its socket in 20s")
            time.sleep(0.02)
        yield proc
    finally:
        if proc.poll() is None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if proc.stderr:
            proc.stderr.close()
