"""The hub's IPC socket: newline-delimited JSON-RPC 2.0 over a Unix socket.

Methods: `hello`, `actions`, `plugins`, `status`, `perform`, `job`, `query`, `subscribe`,
`unsubscribe`, `shutdown`; a connection whose first request names an upgrade a plugin
registered (`mcp.open`: an MCP session) is handed to that plugin. A subscription streams `message` notifications. Requests on
one connection run concurrently; replies carry the request's id. Peers of another uid
are refused.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

from .context import Context
from .core import dump_result
from .errors import BusError, InvalidInput
from .messages import Subscription

if TYPE_CHECKING:
    from .hub import Hub

log = logging.getLogger("fleetbus.ipc")

PROTOCOL = 1
MAX_LINE = 16 * 1024 * 1024
PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS = -32700, -32600, -32601, -32602
INTERNAL_ERROR = -32603  # the hub's own fault (logged with its traceback)
BUS_ERROR = -32000  # a BusError: `data` carries its type, code and message
CALLER_ERRORS = frozenset({PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS})
MAX_IN_FLIGHT = 256  # requests one connection may have running; past that it is not read


def peer_uid(stream: anyio.abc.SocketStream) -> int | None:
    """The uid of the process at the other end (Linux SO_PEERCRED), None where unknown."""
    sock = stream.extra(anyio.abc.SocketAttribute.raw_socket)
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (AttributeError, OSError):
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def encode(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), default=str).encode() + b"\n"


class RpcError(Exception):
    def __init__(self, code: int, message: str, data: Any = None) -> None:
        super().__init__(message)
        self.code, self.message, self.data = code, message, data


async def serve(
    hub: Hub, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
) -> None:
    """Listen on the hub's socket until cancelled."""
    path = hub.socket_path
    path.unlink(missing_ok=True)  # we hold the hub lock: any socket here is stale
    old = os.umask(0o177)
    try:
        listener = await anyio.create_unix_listener(path)
    finally:
        os.umask(old)
    os.chmod(path, 0o600)
    async with listener:
        task_status.started()
        await listener.serve(lambda stream: Connection(hub, stream).run())


@dataclass
class Upgraded:
    """A connection handed to an upgrade handler: the stream, its reader (which may hold
    bytes already read), and the id and params of the request that asked for it."""

    stream: anyio.abc.SocketStream
    reader: BufferedByteReceiveStream
    request_id: Any
    params: dict[str, Any]


UpgradeHandler = Callable[[Upgraded], Awaitable[None]]


class Connection:
    """One client: reads requests, runs each in its own task, serializes replies."""

    def __init__(self, hub: Hub, stream: anyio.abc.SocketStream) -> None:
        self.hub = hub
        self.stream = stream
        self.reader = BufferedByteReceiveStream(stream)
        self.send_lock = anyio.Lock(fast_acquire=True)
        self.subs: dict[str, Subscription] = {}
        self._next_sub = 0
        self.tg: anyio.abc.TaskGroup | None = None  # the connection's: its requests and pumps
        self.in_flight = anyio.Semaphore(MAX_IN_FLIGHT)

    async def send(self, obj: Any) -> None:
        async with self.send_lock:
            await self.stream.send(encode(obj))

    async def run(self) -> None:
        uid = peer_uid(self.stream)
        if uid is not None and uid != os.getuid():
            log.warning("refused a connection from uid %d", uid)
            with contextlib.suppress(Exception):
                await self.send(
                    _error(
                        None,
                        INVALID_REQUEST,
                        "connection refused: the hub serves only its own user",
                    )
                )
            await self.stream.aclose()
            return
        self.hub.clients += 1
        first = True
        try:
            async with anyio.create_task_group() as tg:
                self.tg = tg
                while True:
                    try:
                        line = await self.reader.receive_until(b"\n", MAX_LINE)
                    except (
                        anyio.EndOfStream,
                        anyio.IncompleteRead,
                        anyio.BrokenResourceError,
                        OSError,
                    ):
                        break
                    except anyio.DelimiterNotFound:
                        await self.send(
                            _error(None, PARSE_ERROR, f"request line longer than {MAX_LINE} bytes")
                        )
                        break
                    if not line.strip():
                        continue
                    if first:
                        first = False
                        upgrade = self.upgrade(line)
                        if upgrade is not None:
                            await upgrade
                            break
                    await self.in_flight.acquire()  # back-pressure, not an error
                    tg.start_soon(self.handle, line)
                tg.cancel_scope.cancel()
        finally:
            for sub in self.subs.values():
                self.hub.bus.close_subscription(sub)
            self.hub.clients -= 1
            with contextlib.suppress(Exception):
                await self.stream.aclose()

    def upgrade(self, line: bytes) -> Awaitable[None] | None:
        """When a connection's first request names one of the hub's upgrades (`mcp.open`),
        the connection is handed to that upgrade's handler for good."""
        if not self.hub.upgrades or not line.lstrip().startswith(b"{"):
            return None
        try:
            req = json.loads(line)
        except ValueError:
            return None
        if not isinstance(req, dict):
            return None
        handler = self.hub.upgrades.get(req.get("method"))  # type: ignore[arg-type]
        if handler is None:
            return None
        params = req.get("params")
        return handler(
            Upgraded(
                self.stream, self.reader, req.get("id"), params if isinstance(params, dict) else {}
            )
        )

    async def handle(self, line: bytes) -> None:
        try:
            await self._handle(line)
        finally:
            self.in_flight.release()

    async def _handle(self, line: bytes) -> None:
        req_id = None
        notification = False  # a valid request without an id gets no reply
        try:
            try:
                req = json.loads(line)
            except ValueError as e:
                raise RpcError(PARSE_ERROR, f"not JSON: {e}") from None
            if not isinstance(req, dict) or not isinstance(req.get("method"), str):
                raise RpcError(INVALID_REQUEST, "a request is an object with a string 'method'")
            req_id = req.get("id")
            notification = "id" not in req
            params = req.get("params") or {}
            if not isinstance(params, dict):
                raise RpcError(INVALID_PARAMS, "params must be an object")
            method = getattr(self, f"rpc_{req['method']}", None)
            if method is None:
                raise RpcError(METHOD_NOT_FOUND, f"unknown method {req['method']!r}")
            try:  # the caller's fault, checked before the call: a TypeError later is ours
                inspect.signature(method).bind(**params)
            except TypeError as e:
                raise RpcError(INVALID_PARAMS, f"bad params for {req['method']}: {e}") from None
            result = await method(**params)
            reply: dict[str, Any] = {"jsonrpc": "2.0", "id": req_id, "result": result}
        except RpcError as e:
            reply = _error(req_id, e.code, e.message, e.data)
        except BusError as e:
            reply = _error(req_id, BUS_ERROR, e.message, e.to_dict())
        except Exception as e:  # a bug of ours: report it as a clear line, log the traceback
            log.exception("IPC request failed")
            reply = _error(req_id, INTERNAL_ERROR, f"internal error: {type(e).__name__}: {e}")
        if not notification:
            with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                await self.send(reply)

    # -- methods -----------------------------------------------------------------------------
    async def rpc_hello(self) -> dict[str, Any]:
        from .version import version

        return {
            "protocol": PROTOCOL,
            "version": version(),
            "pid": os.getpid(),
            "home": str(self.hub.home.root),
        }

    async def rpc_actions(self, exposed_only: bool = False) -> list[dict[str, Any]]:
        return self.hub.bus.list_actions(exposed_only=exposed_only)

    async def rpc_plugins(self) -> dict[str, Any]:
        ps = self.hub.plugins
        return {
            "plugins": [i.to_dict() for i in ps.infos],
            "skipped": [{"name": n, "why": w} for n, w in ps.skipped],
        }

    async def rpc_status(self) -> dict[str, Any]:
        return self.hub.status()

    async def rpc_perform(
        self,
        action: str,
        input: Any = None,
        context: dict[str, Any] | None = None,
        timeout: float | None = None,
        background: bool = False,
    ) -> Any:
        ctx = _context(context)
        if background:
            return {"job_id": self.hub.bus.start_job(action, input, context=ctx)}
        return dump_result(await self.hub.bus.perform(action, input, context=ctx, timeout=timeout))

    async def rpc_job(self, job_id: str, wait: float | None = None) -> dict[str, Any]:
        job = self.hub.bus.job(job_id)
        if job is None:
            raise InvalidInput.from_errors(
                "job", [{"field": "job_id", "message": f"no job {job_id!r}"}]
            )
        if wait:
            with anyio.move_on_after(wait):
                await job.done.wait()
        return job.info()

    async def rpc_query(
        self, type: str, data: dict[str, Any] | None = None, all: bool = False
    ) -> Any:
        types = self.hub.bus.query_types()
        cls = types.get(type)
        if cls is None:
            known = ", ".join(sorted(types)) or "none"
            raise InvalidInput.from_errors(
                "query", [{"field": "type", "message": f"unknown query {type!r} (known: {known})"}]
            )
        try:
            q = cls.model_validate(data or {})
        except Exception as e:
            from pydantic import ValidationError

            if isinstance(e, ValidationError):
                raise InvalidInput.from_validation(type, e) from None
            raise
        if all:
            return [dump_result(a) for a in await self.hub.bus.query_all(q)]
        return dump_result(await self.hub.bus.query(q))

    async def rpc_subscribe(
        self, topics: list[str] | None = None, since: int | None = None, buffer: int = 1024
    ) -> dict[str, Any]:
        self._next_sub += 1
        sid = str(self._next_sub)
        bus = self.hub.bus
        sub = bus.open_subscription(topics, name=f"ipc:{sid}", buffer=max(1, min(buffer, 65536)))
        backlog = (
            [e for e in bus.history(since) if sub.matches(e.topic)] if since is not None else []
        )
        self.subs[sid] = sub
        assert self.tg is not None
        self.tg.start_soon(self._pump, sid, sub, backlog)  # ends with the connection
        return {"subscription": sid, "seq": bus.seq}

    async def _pump(self, sid: str, sub: Subscription, backlog: list[Any]) -> None:
        reported = 0
        try:
            for env in backlog:
                await self.send(_note(sid, env.to_dict(), 0))
            async for env in sub:
                dropped = sub.dropped
                await self.send(_note(sid, env.to_dict(), dropped - reported))
                reported = dropped
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
            pass
        finally:
            self.hub.bus.close_subscription(sub)

    async def rpc_unsubscribe(self, subscription: str) -> dict[str, Any]:
        sub = self.subs.pop(subscription, None)
        if sub is not None:
            self.hub.bus.close_subscription(sub)
        return {"ok": sub is not None}

    async def rpc_shutdown(self) -> dict[str, Any]:
        self.hub.request_stop()
        return {"ok": True, "pid": os.getpid()}


def _context(data: Any) -> Context:
    if data is None:
        return Context(caller="ipc")
    if not isinstance(data, dict):
        raise RpcError(INVALID_PARAMS, "context must be an object")
    try:
        return Context.from_dict(data, caller="ipc")
    except TypeError as e:
        raise RpcError(INVALID_PARAMS, str(e)) from None


def _error(req_id: Any, code: int, message: str, data: Any = None) -> dict[str, Any]:
    err: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "id": req_id, "error": err}


def _note(sid: str, envelope: dict[str, Any], dropped: int) -> dict[str, Any]:
    params: dict[str, Any] = {"subscription": sid, **envelope}
    if dropped:
        params["dropped"] = dropped
    return {"jsonrpc": "2.0", "method": "message", "params": params}
