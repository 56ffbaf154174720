"""Hubs in fleet mode for tests and benchmarks: a real `nats-server` and `fleetbus hub`
processes, one home each, on 127.0.0.1.

with fleet_hubs(tmp_path, ack_wait=3) as fleet:
    fleet.start("a"); fleet.start("b")
    task = fleet.call("a", "fleet.dispatch", {"agent": "fake", ...})

Every hub started is stopped when the block ends (SIGTERM, then SIGKILL), and what is left
of the runs of each home (a SIGKILLed hub's agents) is killed by the pids they recorded.
"""

from __future__ import annotations

import json
import signal
import subprocess
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from fleetbus.bus.blockingclient import BlockingClient
from fleetbus.bus.hubstart import can_connect
from fleetbus.bus.paths import Home

from .hub import cli_command, isolated_env
from .nats import NatsServer, nats_server
from .processes import end_process, reap_runs


class FleetHubs:
    """Hub processes in homes `root/<node>`, each with a manifest naming the NATS server."""

    def __init__(
        self,
        root: Path,
        server: NatsServer,
        fleet: Mapping[str, Any],
        manifest: Mapping[str, Any] | None = None,
    ) -> None:
        self.root = root
        self.server = server
        self.fleet = dict(fleet)
        self.manifest = dict(manifest or {})  # more sections every hub's manifest has
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.homes: dict[str, Path] = {}
        self.envs: dict[str, dict[str, str]] = {}

    def start(
        self,
        node: str,
        *,
        lanes: int = 2,
        env: Mapping[str, str] | None = None,
        wait_connected: bool = True,
        alone: bool = False,
        **fleet: Any,
    ) -> subprocess.Popen[bytes]:
        """Start (or restart) the hub of `node` with `lanes` total lanes; `alone`: without
        a fleet section (a hub on its own, for comparison)."""
        home = self.homes.setdefault(node, self.root / node)
        home.mkdir(parents=True, exist_ok=True)
        spec = {"url": self.server.url, "node": node, **self.fleet, **fleet}
        dispatch = {**self.manifest.get("dispatch", {}), "total_concurrency": lanes}
        manifest = {**self.manifest, "dispatch": dispatch}
        if not alone:
            manifest["fleet"] = spec
        config = home / "fleet-manifest.yaml"
        config.write_text(json.dumps(manifest))
        hub_env = isolated_env(home, config=config)
        hub_env.update(env or {})
        self.envs[node] = hub_env
        with open(home / "hub-process.log", "ab") as log:
            proc = subprocess.Popen(
                cli_command("hub"),
                env=hub_env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self.procs[node] = proc
        deadline = time.monotonic() + 30
        while not can_connect(Home(home).socket):
            if proc.poll() is not None:
                raise RuntimeError(f"hub {node} exited: {self.log(node)[-2000:]}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"hub {node} did not open its socket in 30s")
            time.sleep(0.02)
        if wait_connected and not alone:
            self.wait(node, lambda s: s["connected"], "connected to NATS", "fleet.status")
        return proc

    def log(self, node: str) -> str:
        path = self.homes[node] / "hub-process.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def kill(self, node: str, sig: int = signal.SIGKILL) -> None:
        """Signal the hub of `node` and wait for it to exit."""
        end_process(self.procs.pop(node), sig, wait=15)
        # a hub killed with its lock held leaves a stale socket; the next hub clears it

    def call(self, node: str, action: str, payload: Any = None, timeout: float = 30) -> Any:
        with BlockingClient.open(Home(self.homes[node]).socket) as client:
            return client.call(
                "perform", {"action": action, "input": payload or {}}, timeout=timeout
            )

    def wait(
        self,
        node: str,
        predicate: Any,
        what: str,
        action: str = "fleet.status",
        payload: Any = None,
        timeout: float = 60,
    ) -> Any:
        """Call `action` on `node` until `predicate(result)` holds; the result."""
        deadline = time.monotonic() + timeout
        while True:
            result = self.call(node, action, payload)
            if predicate(result):
                return result
            if time.monotonic() > deadline:
                raise TimeoutError(f"hub {node}: not {what} within {timeout}s; last: {result}")
            time.sleep(0.05)

    def runs(self, node: str) -> list[dict[str, Any]]:
        """Every run of `node`'s hub."""
        return list(self.call(node, "runner.status", {"limit": 1000})["runs"])

    def close(self) -> None:
        for node in list(self.procs):
            self.kill(node, signal.SIGTERM)
        for home in self.homes.values():
            reap_runs(home)


@contextmanager
def fleet_hubs(
    root: Path,
    *,
    token: str | None = None,
    manifest: Mapping[str, Any] | None = None,
    **fleet: Any,
) -> Iterator[FleetHubs]:
    """A NATS server and a `FleetHubs` on it; `fleet` holds the fleet settings every hub
    shares, `manifest` other sections (agents, dispatch) they share."""
    with nats_server(root, token=token) as server:
        hubs = FleetHubs(root, server, fleet, manifest)
        try:
            yield hubs
        finally:
            hubs.close()
