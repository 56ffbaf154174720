"""The hub: the one process that owns the bus, the plugins and the store of a home.

`Hub.run()` takes the home's lock, loads the manifest and the plugins, migrates the
store, registers every declaration, runs the plugins' `startup` hooks in order, serves
the IPC socket, and on stop runs `shutdown` hooks in reverse. Nothing half-configured:
any fault before `task_status.started()` is a `StartupError` and nothing is left open.
"""

from __future__ import annotations

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
from .core import Bus
from .errors import BusError, StartupError, unwrap_group
from .ipc import UpgradeHandler
from .lock import HubLock
from .manifests import Manifest, load_manifest
from .messages import ActionsChanged
from .paths import Home
from .plugins import DEFAULT_PLUGINS, PluginSet
from .queries import QueryRegistrar
from .store import MigrationsRegistrar, Store
from .subscribers import SubscriberRegistrar, SubscriberSpec
from .version import version

log = logging.getLogger("fleetbus.hub")


class Hub:
    """Bus + plugins + store for one `FLEETBUS_HOME`.

    `idle_timeout`: seconds without clients, actions or busy plugins after which `run`
    returns (0 disables; None takes the manifest's `hub.idle_timeout`).
    """

    def __init__(
        self,
        home: Home | Path | None = None,
        *,
        manifest: Manifest | None = None,
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
        self._manifest = manifest
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

    def add_upgrade(self, method: str, handler: UpgradeHandler) -> None:
        """Hand IPC connections whose first request is `method` to `handler` (see ipc.py)."""
        if method in self.upgrades:
            raise StartupError(f"the IPC upgrade {method!r} is registered twice")
        self.upgrades[method] = handler

    # -- public ------------------------------------------------------------------------------
    @property
    def manifest(self) -> Manifest:
        if self._manifest is None:
            raise RuntimeError("the manifest is loaded when the hub runs")
        return self._manifest

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
        return self._manifest.hub.idle_timeout if self._manifest else 0.0

    def plugin_config(self, name: str) -> dict[str, Any]:
        """The free-form `plugins.<name>` section of the manifest for a third-party plugin."""
        return dict(self.manifest.plugins.get(name, {}))

    def request_stop(self) -> None:
        self._stop.set()

    def is_busy(self) -> bool:
        if self.clients or self.bus.inflight:
            return True
        if any(job.status == "running" for job in list(self.bus._jobs.values())):
            return True
        for _name, fn in self.plugins.impls("is_busy"):
            try:
                if fn(hub=self):
                    return True
            except Exception:
                log.exception("is_busy hook failed")
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
            if self._manifest is None:
                self._manifest = load_manifest(env=self.env)
            self.plugins.load()
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
            started: list[tuple[str, Callable[..., Any]]] = []
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
        for name, fn in self.plugins.impls("register_migrations"):
            fn(register=MigrationsRegistrar(name, lambda p, m: sets.append((p, m)), self))
        self.store.migrate(sets)
        for name, fn in self.plugins.impls("register_actions"):
            self._call_hook(
                name,
                "register_actions",
                fn,
                register=ActionRegistrar(name, self.bus.add_action, self),
            )
        for name, fn in self.plugins.impls("register_queries"):
            self._call_hook(
                name,
                "register_queries",
                fn,
                register=QueryRegistrar(name, self.bus.add_query_handler, self),
            )
        subs: list[SubscriberSpec] = []
        for name, fn in self.plugins.impls("register_subscribers"):
            self._call_hook(
                name,
                "register_subscribers",
                fn,
                subscribe=SubscriberRegistrar(name, subs.append, self),
            )
        for spec in subs:
            self.bus.subscribe(
                spec.handler,
                spec.topics,
                name=f"{spec.plugin}:{spec.handler.__name__}",
                buffer=spec.buffer,
            )

    @staticmethod
    def _call_hook(plugin: str, hook: str, fn: Callable[..., Any], **kwargs: Any) -> None:
        try:
            fn(**kwargs)
        except BusError:
            raise
        except Exception as e:
            raise StartupError(
                f"plugin {plugin!r} failed in {hook}: {type(e).__name__}: {e}"
            ) from e

    async def _startup(self, started: list[tuple[str, Callable[..., Any]]]) -> None:
        shutdowns = dict(self.plugins.impls("shutdown"))
        for name, fn in self.plugins.impls("startup"):
            try:
                result = fn(hub=self)
                if inspect.isawaitable(result):
                    await result
            except Exception as e:
                raise StartupError(
                    f"plugin {name!r} failed to start: {type(e).__name__}: {e}"
                ) from e
            finally:
                if name in shutdowns:
                    started.append((name, shutdowns.pop(name)))
        # plugins with a shutdown hook but no startup hook are shut down too
        started.extend(shutdowns.items())

    async def _shutdown(self, started: list[tuple[str, Callable[..., Any]]]) -> None:
        order = {name: n for n, name in enumerate(self.plugins.names)}
        for name, fn in sorted(started, key=lambda item: order.get(item[0], 0), reverse=True):
            try:
                result = fn(hub=self)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                log.exception("plugin %r failed to shut down", name)

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
