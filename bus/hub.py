"""The hub: the one process that owns the bus, the plugins and the store of a home.

`Hub.run()` takes the home's lock, loads the plugins, validates the manifest against the
sections they register, migrates the store, registers every declaration, runs the
plugins' `startup` hooks in order, serves the IPC socket, and on stop runs `shutdown`
hooks in reverse. Nothing half-configured: any fault before `task_status.started()` is a
`StartupError` and nothing is left open.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from .actions import ActionRegistrar
from .config import Config
from .core import Bus
from .errors import StartupError, unwrap_group
from .ipc import UpgradeHandler
from .lock import HubLock
from .manifests import HUB, core_sections, load_manifest
from .messages import ActionsChanged
from .paths import Home
from .plugins import DEFAULT_PLUGINS, PluginSet
from .queries import QueryRegistrar
from .stash import Stash
from .store import MigrationsRegistrar, Store
from .subscribers import SubscriberRegistrar, SubscriberSpec
from .version import version

log = logging.getLogger("fleetbus.hub")


class Hub:
    """Bus + plugins + store for one `FLEETBUS_HOME`.

    `idle_timeout`: seconds without clients, actions or busy plugins after which `run`
    returns (0 disables; None takes the manifest's `hub.idle_timeout`). Plugins keep their
    per-hub objects in `stash` and read their config sections from `config`.
    """

    def __init__(
        self,
        home: Home | Path | None = None,
        *,
        builtins: Sequence[str] = DEFAULT_PLUGINS,
        inline: Sequence[tuple[str, object]] = (),
        entry_points: bool = True,
        env: Mapping[str, str] = os.environ,
        idle_timeout: float | None = None,
        serve_socket: bool = True,
        clock: Callable[[], float] = time.monotonic,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        if home is None:
            home = Home.from_env(env)
        self.home = home if isinstance(home, Home) else Home(Path(home).resolve())
        self.env = env
        self._config: Config | None = None
        self.stash = Stash()
        self.plugins = PluginSet(
            builtins=builtins, inline=inline, entry_points=entry_points, env=env
        )
        self.bus = Bus()
        self.store = Store(self.home.db, self.bus.publish)
        self.serve_socket = serve_socket
        self._idle_timeout = idle_timeout
        self.clock = clock
        self.wall_clock = wall_clock  # epoch seconds; tests inject one for rates and backoff
        self.clients = 0
        self.started_at: float | None = None
        self._stop = anyio.Event()
        self._lock = HubLock(self.home.lock)
        self._tg: anyio.abc.TaskGroup | None = None
        self.socket_path = self.home.socket
        self.upgrades: dict[str, UpgradeHandler] = {}

    def __repr__(self) -> str:
        return f"<Hub {self.home.root}>"

    def add_upgrade(self, method: str, handler: UpgradeHandler) -> None:
        """Hand IPC connections whose first request is `method` to `handler` (see ipc.py)."""
        if method in self.upgrades:
            raise StartupError(f"the IPC upgrade {method!r} is registered twice")
        self.upgrades[method] = handler

    # -- public ------------------------------------------------------------------------------
    @property
    def config(self) -> Config:
        """The validated manifest: `hub.config[SECTION]` reads a registered section."""
        if self._config is None:
            raise RuntimeError("the config is loaded when the hub runs, after the plugins")
        return self._config

    @property
    def task_group(self) -> anyio.abc.TaskGroup:
        """The hub's task group: plugins start their long-running work here."""
        if self._tg is None:
            raise RuntimeError("the hub is not running")
        return self._tg

    @property
    def idle_timeout(self) -> float:
        if self._idle_timeout is not None:
            return self._idle_timeout
        return self._config[HUB].idle_timeout if self._config is not None else 0.0

    def request_stop(self) -> None:
        self._stop.set()

    def is_busy(self) -> bool:
        if self.clients or self.bus.inflight:
            return True
        if self.bus.jobs_running:
            return True
        for call in self.plugins.callers("is_busy"):
            try:
                if any(call(hub=self)):
                    return True
            except Exception:
                log.exception("plugin %r failed in is_busy", call.plugin)
        return False

    def status(self) -> dict[str, Any]:
        return {
            "version": version(),
            "pid": os.getpid(),
            "home": str(self.home.root),
            "socket": str(self.socket_path),
            "uptime_s": round(time.time() - self.started_at, 3) if self.started_at else 0.0,
            "clients": self.clients,
            "plugins": self.plugins.names,
            "actions": len(self.bus.actions),
            "subscribers": self.bus.subscriber_stats(),
            "tasks": len(asyncio.all_tasks()),
            "idle_timeout_s": self.idle_timeout,
        }

    # -- run ---------------------------------------------------------------------------------
    async def run(
        self, *, task_status: anyio.abc.TaskStatus[Hub] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Start, serve until `request_stop()` or idle, then shut down cleanly."""
        self.home.ensure()
        self._lock.acquire()
        try:
            self.plugins.load()
            self._config = load_manifest(env=self.env, sections=core_sections(self.plugins))
            with unwrap_group():
                await self._serve(task_status)
        finally:
            self._tg = None
            self.store.close()
            if self.serve_socket:
                self.socket_path.unlink(missing_ok=True)
            self._lock.release()

    async def _serve(self, task_status: anyio.abc.TaskStatus[Hub]) -> None:
        async with self.bus, anyio.create_task_group() as tg:
            self._tg = tg
            started: set[str] = set()
            try:
                self.store.open()
                self._collect()
                await self._startup(started)
                if self.serve_socket:
                    from .ipc import serve

                    await tg.start(serve, self)
                self.started_at = time.time()
                self.bus.on_actions_changed(
                    lambda: self.bus.publish(ActionsChanged(actions=len(self.bus.actions)))
                )
                log.info("hub %d ready on %s", os.getpid(), self.socket_path)
                task_status.started(self)
                if self.idle_timeout > 0:
                    tg.start_soon(self._watch_idle)
                await self._stop.wait()
            finally:
                with anyio.CancelScope(shield=True):
                    await self._shutdown(started)
                tg.cancel_scope.cancel()

    def _collect(self) -> None:
        sets: list[tuple[str, Any]] = []

        def add_set(plugin: str, migrations: Any) -> None:
            sets.append((plugin, migrations))

        for call in self.plugins.callers("register_migrations"):
            call.declare(register=MigrationsRegistrar(call.plugin, add_set, self), hub=self)
        self.store.migrate(sets)
        for call in self.plugins.callers("register_actions"):
            call.declare(register=ActionRegistrar(call.plugin, self.bus.add_action, self), hub=self)
        for call in self.plugins.callers("register_queries"):
            register = QueryRegistrar(call.plugin, self.bus.add_query_handler, self)
            call.declare(register=register, hub=self)
        subs: list[SubscriberSpec] = []
        for call in self.plugins.callers("register_subscribers"):
            call.declare(subscribe=SubscriberRegistrar(call.plugin, subs.append, self), hub=self)
        for spec in subs:
            self.bus.subscribe(
                spec.handler,
                spec.topics,
                name=f"{spec.plugin}:{spec.handler.__name__}",
                buffer=spec.buffer,
            )

    async def _startup(self, started: set[str]) -> None:
        """Run `startup` hooks in order; `started` collects the plugins to shut down (those
        whose startup ran, even if it failed; every plugin once all have started)."""
        for call in self.plugins.callers("startup"):
            started.add(call.plugin)
            try:
                for result in call(hub=self):
                    if inspect.isawaitable(result):
                        await result
            except Exception as e:
                raise StartupError(
                    f"plugin {call.plugin!r} failed to start: {type(e).__name__}: {e}"
                ) from e
        started.update(self.plugins.names)  # plugins with a shutdown hook but no startup hook

    async def _shutdown(self, started: set[str]) -> None:
        for call in self.plugins.callers("shutdown", reverse=True):
            if call.plugin not in started:
                continue
            try:
                for result in call(hub=self):
                    if inspect.isawaitable(result):
                        await result
            except Exception:
                log.exception("plugin %r failed to shut down", call.plugin)

    async def _watch_idle(self) -> None:
        idle_since = self.clock()
        step = min(1.0, max(self.idle_timeout / 4, 0.01))
        while not self._stop.is_set():
            await anyio.sleep(step)
            if self.is_busy():
                idle_since = self.clock()
            elif self.clock() - idle_since >= self.idle_timeout:
                log.info("hub idle for %gs: exiting", self.idle_timeout)
                self.request_stop()
