"""Running the MCP front end: over stdio or streamable HTTP, against a hub.

The server is a client of the home's hub (started when none runs) and reconnects, starting
a new hub, if the hub goes away. With `embedded` it runs a hub in-process instead. An
assistant's session ending never stops the runs it started: they belong to the hub.
"""

from __future__ import annotations

import contextlib
import hmac
import ipaddress
import logging
import os
import secrets
import signal
import socket
import stat
from collections.abc import AsyncIterator, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc

from fleetbus.bus.client import Client, HubClient, LocalClient, ensure_hub
from fleetbus.bus.errors import ConnectionFailed, StartupError, unwrap_group
from fleetbus.bus.paths import Home

from .mcp_server import FleetMCP

log = logging.getLogger("fleetbus.serve")

LOOPBACK_NAMES = {"localhost", "127.0.0.1", "::1"}


class HubLink:
    """The current connection to the home's hub, re-made (starting a hub) when it drops."""

    def __init__(self, home: Home, env: Mapping[str, str]) -> None:
        self.home = home
        self.env = env
        self._client: HubClient | None = None
        self._ready = anyio.Event()

    async def get(self) -> Client:
        if self._client is None or self._client.disconnected.is_set():
            with anyio.fail_after(30):
                await self._ready.wait()
        assert self._client is not None
        return self._client

    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        started = False
        while True:
            try:
                path = await ensure_hub(self.home, env=self.env)
                async with HubClient.open(path) as client:
                    self._client = client
                    self._ready.set()
                    if not started:
                        started = True
                        task_status.started()
                    await client.disconnected.wait()
                    self._ready = anyio.Event()
                    log.warning("the hub closed the connection; reconnecting")
            except ConnectionFailed as e:
                if not started:
                    raise
                log.warning("cannot reach the hub: %s; retrying", e)
            await anyio.sleep(0.5)


@asynccontextmanager
async def fleet(home: Home, env: Mapping[str, str], *, embedded: bool) -> AsyncIterator[FleetMCP]:
    """A running FleetMCP bound to the home's hub (or an in-process one)."""
    with unwrap_group():
        async with anyio.create_task_group() as tg:
            if embedded:
                from fleetbus.bus.hub import Hub

                hub = Hub(home, env=env, idle_timeout=0)
                await tg.start(hub.run)
                local = LocalClient(hub)

                async def get_local() -> Client:
                    return local

                app = FleetMCP(get_local)
            else:
                link = HubLink(home, env)
                await tg.start(link.run)
                app = FleetMCP(link.get)
                hub = None
            await tg.start(app.run)
            try:
                yield app
            finally:
                tg.cancel_scope.cancel()
                if hub is not None:
                    hub.request_stop()


async def serve_stdio(home: Home, env: Mapping[str, str], *, embedded: bool) -> None:
    """Relay stdio to an MCP session in the hub: the home's hub (started when none runs),
    or with `embedded` one run in this process for as long as the client stays."""
    from fleetbus.bus.hub import Hub

    from .relay import Relay

    if not embedded:
        await anyio.to_thread.run_sync(Relay(home, env).run, abandon_on_cancel=True)
        return
    hub = Hub(home, env=env, idle_timeout=0)
    with unwrap_group():
        async with anyio.create_task_group() as tg:
            await tg.start(hub.run)
            try:
                relay = Relay(home, env, socket_path=hub.socket_path)
                await anyio.to_thread.run_sync(relay.run, abandon_on_cancel=True)
            finally:
                hub.request_stop()


# -- HTTP ---------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


TOKEN_FILE_LIMIT = 4096  # bytes read of a token file


def load_token(home: Home, env: Mapping[str, str]) -> str:
    """`FLEETBUS_TOKEN`, else the home's token file (created with mode 0600 on first use).

    A token file others may read (group or world bits set) is made 0600 before it is used,
    with a warning; one that is not a regular file, or is empty, is refused."""
    if env.get("FLEETBUS_TOKEN"):
        return env["FLEETBUS_TOKEN"]
    home.ensure()
    path = home.root / "token"
    token = _read_token_file(path)
    if token is not None:
        return token
    token = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token


def _read_token_file(path: Path) -> str | None:
    """The token in `path`, None when there is no such file; its mode made 0600 first."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    except OSError as e:
        raise StartupError(
            f"cannot read the token file {path}: {e.strerror or e}; remove it (a new one is "
            "made) or set FLEETBUS_TOKEN"
        ) from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise StartupError(
                f"the token file {path} is not a regular file; remove it (a new one is made) "
                "or set FLEETBUS_TOKEN"
            )
        if st.st_mode & 0o077:
            os.fchmod(fd, 0o600)
            log.warning(
                "the token file %s had mode %04o (others could read it): made it 0600",
                path,
                stat.S_IMODE(st.st_mode),
            )
        token = os.read(fd, TOKEN_FILE_LIMIT).decode(errors="replace").strip()
    finally:
        os.close(fd)
    if not token:
        raise StartupError(
            f"the token file {path} is empty; remove it (a new one is made) or set FLEETBUS_TOKEN"
        )
    return token


@dataclass
class HttpOptions:
    host: str = "127.0.0.1"
    port: int = 8765
    allowed_hosts: Sequence[str] = field(default_factory=list)
    allowed_origins: Sequence[str] = field(default_factory=list)

    def check(self, env: Mapping[str, str]) -> None:
        """Refuse to expose the server beyond this machine without a token and host list."""
        if is_loopback(self.host):
            return
        if not env.get("FLEETBUS_TOKEN") or not self.allowed_hosts:
            raise StartupError(
                f"binding {self.host} would expose fleetbus beyond this machine: set FLEETBUS_TOKEN "
                "and name the hosts clients use with --allowed-host (or keep --host 127.0.0.1)"
            )


class StaticTokenVerifier:
    def __init__(self, token: str) -> None:
        self._token = token.encode()

    async def verify_token(self, token: str) -> Any:
        from mcp.server.auth.provider import AccessToken

        if hmac.compare_digest(token.encode(), self._token):
            return AccessToken(token=token, client_id="fleetbus", scopes=[])
        return None


def http_app(app: FleetMCP, token: str, options: HttpOptions, port: int, *, runs_dir: Path) -> Any:
    """The Starlette app: MCP at /mcp, the dashboard (`dashboard.py`) at / with the same
    token, Host and Origin rules; the dashboard is `.state.dashboard`."""
    from mcp.server.auth.settings import AuthSettings
    from mcp.server.transport_security import TransportSecuritySettings

    from .dashboard import Dashboard

    hosts = list(options.allowed_hosts) or [
        f"{options.host}:*" if ":" not in options.host else f"[{options.host}]:*",
        "127.0.0.1:*",
        "localhost:*",
        "[::1]:*",
    ]
    origins = list(options.allowed_origins) or [
        "http://127.0.0.1:*",
        "http://localhost:*",
        "http://[::1]:*",
    ]
    security = TransportSecuritySettings(
        enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins
    )
    dashboard = Dashboard(
        app.get_client, token, hosts=hosts, origins=origins, port=port, runs_dir=runs_dir
    )
    starlette = app.server.streamable_http_app(
        streamable_http_path="/mcp",
        host=options.host,
        transport_security=security,
        token_verifier=StaticTokenVerifier(token),
        auth=AuthSettings(issuer_url=f"http://127.0.0.1:{port}", resource_server_url=None),
        custom_starlette_routes=dashboard.routes(),
    )
    starlette.state.dashboard = dashboard
    return starlette


async def serve_http(
    home: Home,
    env: Mapping[str, str],
    options: HttpOptions,
    *,
    embedded: bool,
    task_status: anyio.abc.TaskStatus[int] = anyio.TASK_STATUS_IGNORED,
) -> None:
    """Serve streamable HTTP at http://HOST:PORT/mcp until SIGINT/SIGTERM or cancellation."""
    import uvicorn

    options.check(env)
    token = load_token(home, env)
    family = socket.AF_INET6 if ":" in options.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((options.host, options.port))
    except OSError as e:
        sock.close()
        raise StartupError(f"cannot listen on {options.host}:{options.port}: {e.strerror}") from e
    port = sock.getsockname()[1]

    class QuietServer(uvicorn.Server):
        @contextlib.contextmanager
        def capture_signals(self) -> Any:  # we handle signals ourselves
            yield

    async with fleet(home, env, embedded=embedded) as app:
        starlette = http_app(app, token, options, port, runs_dir=home.root / "runs")
        config = uvicorn.Config(
            starlette,
            log_level="warning",
            lifespan="on",
            timeout_graceful_shutdown=3,
        )
        server = QuietServer(config)

        async def stop_on_signal() -> None:
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for _ in signals:
                    server.should_exit = True
                    starlette.state.dashboard.close()  # its event streams end now
                    return

        async with anyio.create_task_group() as tg:
            tg.start_soon(stop_on_signal)

            async def ready() -> None:
                while not server.started:
                    await anyio.sleep(0.01)
                log.info("serving MCP on http://%s:%d/mcp", options.host, port)
                log.info("dashboard on http://%s:%d/", options.host, port)
                task_status.started(port)

            tg.start_soon(ready)
            try:
                await server.serve([sock])
            finally:
                tg.cancel_scope.cancel()
                sock.close()


def token_path(home: Home) -> Path:
    return home.root / "token"
