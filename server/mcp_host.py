"""MCP sessions served inside the hub: the built-in plugin behind `fleetbus serve`.

The stdio relay (`relay.py`) opens an IPC connection whose first request is `mcp.open`
with the client's `initialize` params; from then on the connection carries the client's
MCP messages, one JSON object a line, and this plugin serves them with the SDK's
low-level server (`mcp_server.FleetMCP`), which the hub loads once, in the background,
after it starts. Each connection is one MCP session; channel events reach it straight
from the bus. The session is primed with the client's `initialize` (its answer, already
given by the relay, is dropped), so the SDK serves the handshake era the relay
negotiated.

The plugin also publishes the tool list into the home (`mcp-tools.json`) at startup,
before the hub listens, and whenever the exposed actions change, so a relay answers
`tools/list` as soon as a starting hub listens, before the SDK is loaded.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import json
import logging
import os
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
import anyio.to_thread

from fleetbus.bus import hookimpl
from fleetbus.bus.client import LocalClient
from fleetbus.bus.hub import Hub
from fleetbus.bus.ipc import Upgraded

from .relay import OPEN_METHOD, tools_cache
from .tools import tool_list

if TYPE_CHECKING:
    from .mcp_server import FleetMCP

log = logging.getLogger("fleetbus.mcp_host")

PRIME = "fleetbus-host:init"
READY_TIMEOUT = 30.0


class McpHost:
    """The hub's MCP server: one FleetMCP, any number of relayed sessions."""

    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.app: FleetMCP | None = None
        self.ready = anyio.Event()
        self.failed = ""
        self._ids = itertools.count(1)

    async def run(self) -> None:
        """Load the SDK off the event loop, then keep the tools and channel events flowing."""
        try:
            module: Any = await anyio.to_thread.run_sync(
                importlib.import_module, "fleetbus.server.mcp_server"
            )
            local = LocalClient(self.hub)

            async def get_client() -> LocalClient:
                return local

            self.app = module.FleetMCP(get_client, on_tools_changed=self.publish_tools)
            await self.hub.task_group.start(self.app.run)
        except Exception as e:  # the hub goes on serving its other clients
            log.exception("the MCP server failed to start")
            self.failed = f"the hub's MCP server failed to start: {type(e).__name__}: {e}"
        finally:
            self.ready.set()

    def publish_tools(self, tools: list[dict[str, Any]]) -> None:
        """Write the tool list where relays read it while a hub starts (0600, atomic)."""
        path = tools_cache(self.hub.home)
        tmp = path.with_name(f".{path.name}.{os.getpid()}")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as f:
                json.dump({"tools": tools}, f, separators=(",", ":"))
            os.replace(tmp, path)
        except OSError as e:
            log.warning("cannot write %s: %s", path, e.strerror)

    async def serve(self, conn: Upgraded) -> None:
        """Serve one relayed connection as an MCP session until either side closes it."""
        with anyio.move_on_after(READY_TIMEOUT):
            await self.ready.wait()
        if self.app is None:
            reason = self.failed or "the hub's MCP server is still starting; try again"
            await _send(conn, _reply(conn.request_id, error=reason))
            return
        params = conn.params
        init = params.get("initialize")
        if not params.get("raw") and not isinstance(init, dict):
            await _send(
                conn, _reply(conn.request_id, error="mcp.open needs the client's initialize params")
            )
            return
        await _send(conn, _reply(conn.request_id, result={"ok": True}))
        key = f"relay-{next(self._ids)}"
        prime = [] if params.get("raw") else _priming(init, bool(params.get("initialized")))
        await self.app.serve_lines(key, conn.reader, conn.stream, prime=prime, drop_id=PRIME)


def _priming(init: Any, initialized: bool) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = [
        {"jsonrpc": "2.0", "id": PRIME, "method": "initialize", "params": init}
    ]
    if initialized:
        out.append({"jsonrpc": "2.0", "method": "notifications/initialized"})
    return out


def _reply(req_id: Any, *, result: Any = None, error: str | None = None) -> dict[str, Any]:
    if error is not None:
        return {"jsonrpc": "2.0", "id": req_id, "error": {"code": -32603, "message": error}}
    return {"jsonrpc": "2.0", "id": req_id, "result": result}


async def _send(conn: Upgraded, obj: Any) -> None:
    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
        await conn.stream.send(json.dumps(obj).encode() + b"\n")


@hookimpl
def startup(hub: Hub) -> None:
    host = McpHost(hub)
    host.publish_tools(tool_list(hub.bus.list_actions(exposed_only=True)))
    hub.add_upgrade(OPEN_METHOD, host.serve)
    hub.task_group.start_soon(host.run)
