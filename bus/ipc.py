"""The hub's IPC socket: newline-delimited JSON-RPC 2.0 over a Unix socket.

Methods: `hello`, `actions`, `plugins`, `status`, `perform`, `job`, `query`, `subscribe`,
`unsubscribe`, `shutdown`; a connection whose first request names an upgrade a plugin
registered (`mcp.open`: an MCP session) is handed to that plugin. A subscription streams `message` notifications. Requests on
one connection run concurrently; replies carry the request's id. Peers of another uid
are refused.

The boundary: each method's params are a pydantic model (`PARAMS`): strict, no unknown
keys, answered -32602 naming the field; strings with lone surrogates, NaN and nesting past
MAX_DEPTH never get past it. A request line over MAX_LINE is answered and skipped: one bad
request never costs the connection. A subscription belongs to its connection from the
moment it exists.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Annotated, Any

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .context import Context
from .core import dump_result
from .errors import BusError, InvalidInput
from .jsoncheck import MAX_DEPTH, Rejected, check_json, has_surrogate
from .messages import Subscription
from .wire import (
    BUS_ERROR,
    INTERNAL_ERROR,
    INVALID_PARAMS,
    INVALID_REQUEST,
    MAX_LINE,
    METHOD_NOT_FOUND,
    PARSE_ERROR,
    TOO_LARGE,
    encode,
    guess_id,
)

if TYPE_CHECKING:
    from .hub import Hub

log = logging.getLogger("fleetbus.ipc")

PROTOCOL = 1
MAX_IN_FLIGHT = 256  # requests one connection may have running; past that it is not read
MAX_IDLE = 8  # idle workers a connection keeps (after a burst of concurrent requests)


def peer_uid(stream: anyio.abc.SocketStream) -> int | None:
    """The uid of the process at the other end (Linux SO_PEERCRED), None where unknown."""
    sock = stream.extra(anyio.abc.SocketAttribute.raw_socket)
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (AttributeError, OSError):
        return None
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


# -- the parameters of each method, checked at the boundary --------------------------------
class Params(BaseModel):
    """A method's params: no unknown keys, no coercion (`"1"` is not a number)."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


Seconds = Annotated[float, Field(ge=0, le=86400 * 365)]


class NoParams(Params):
    pass


class ActionsParams(Params):
    exposed_only: bool = False


class PerformParams(Params):
    action: Annotated[str, Field(min_length=1, max_length=200)]
    input: Any = None
    context: dict[str, Any] | None = None
    timeout: Annotated[float, Field(gt=0, le=86400 * 365)] | None = None
    background: bool = False


class JobParams(Params):
    job_id: Annotated[str, Field(min_length=1, max_length=200)]
    wait: Seconds | None = None


class QueryParams(Params):
    type: Annotated[str, Field(min_length=1, max_length=200)]
    data: dict[str, Any] | None = None
    all: bool = False


class SubscribeParams(Params):
    topics: list[Annotated[str, Field(min_length=1, max_length=200)]] | None = None
    since: Annotated[int, Field(ge=0)] | None = None
    buffer: Annotated[int, Field(ge=1)] = 1024  # capped at 65,536


class UnsubscribeParams(Params):
    subscription: Annotated[str, Field(max_length=200)]


PARAMS: dict[str, type[Params]] = {
    "hello": NoParams,
    "actions": ActionsParams,
    "plugins": NoParams,
    "status": NoParams,
    "perform": PerformParams,
    "job": JobParams,
    "query": QueryParams,
    "subscribe": SubscribeParams,
    "unsubscribe": UnsubscribeParams,
    "shutdown": NoParams,
}


def _params_error(method: str, e: ValidationError) -> RpcError:
    errors = []
    for err in e.errors(include_url=False, include_context=False, include_input=False):
        field = ".".join(str(p) for p in err["loc"]) or "(params)"
        errors.append({"field": field, "message": err["msg"]})
    detail = "; ".join(f"{x['field']}: {x['message']}" for x in errors)
    return RpcError(INVALID_PARAMS, f"bad params for {method}: {detail}", {"errors": errors})


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
    """One client: reads requests, runs each in a task of its own, serializes replies."""

    def __init__(self, hub: Hub, stream: anyio.abc.SocketStream) -> None:
        self.hub = hub
        self.stream = stream
        self.reader = BufferedByteReceiveStream(stream)
        self.send_lock = anyio.Lock(fast_acquire=True)
        self._sock: socket.socket | None = stream.extra(anyio.abc.SocketAttribute.raw_socket, None)
        self.subs: dict[str, Subscription] = {}
        self._next_sub = 0
        self.tg: anyio.abc.TaskGroup | None = None  # the connection's: its requests and pumps
        self.in_flight = anyio.Semaphore(MAX_IN_FLIGHT)
        # idle workers wait on `_turns` for their turn to read (see `_work`); one turn is
        # given per idle worker, so exactly one worker reads at any time
        self._turns = anyio.Semaphore(0)
        self._idle = 0
        self._first = True  # the next request may ask for an upgrade

    async def send(self, obj: Any) -> None:
        """Write one message whole (messages of concurrent senders never interleave).

        A line that fits in the socket's buffer is written at once, without the pass of
        the event loop anyio's `send` waits first: on a round trip that pass costs as much
        as encoding the reply. The rest of a line that does not fit goes through `send`.
        """
        data = encode(obj)
        lock = self.send_lock
        try:  # a free lock is taken without anyio's cancellation check
            lock.acquire_nowait()
        except anyio.WouldBlock:
            await lock.acquire()
        try:
            if self._sock is not None:
                try:
                    sent = self._sock.send(data)
                except BlockingIOError:
                    sent = 0
                except OSError as e:
                    raise anyio.BrokenResourceError from e
                if sent == len(data):
                    return
                data = data[sent:]
            await self.stream.send(data)
        finally:
            lock.release()

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
        try:
            async with anyio.create_task_group() as tg:
                self.tg = tg
                await self._work()
        finally:
            self.tg = None
            for sub in list(self.subs.values()):
                self.hub.bus.close_subscription(sub)
            self.subs.clear()
            self.hub.clients -= 1
            with contextlib.suppress(Exception):
                await self.stream.aclose()

    async def _work(self) -> None:
        """One of the connection's workers: read the next request, have another worker read
        on, handle the request here, then wait (idle) for a turn to read again. At the end
        of the stream or after an upgrade, end the connection's tasks.

        Why workers, not a task started per request: starting an anyio task (its cancel
        scope, event and wrapper coroutine) costs more than the rest of a round trip, and
        the reply would also wait for the new task's first step; waking an idle worker
        costs a future. Requests still run concurrently, each in a task of its own.
        """
        assert self.tg is not None
        while True:
            line = await self._next_request()
            if line is None:
                self.tg.cancel_scope.cancel()
                return
            if self._idle:
                self._idle -= 1
                self._turns.release()
            else:
                self.tg.start_soon(self._work)
            try:
                await self._handle(line)
            finally:
                self.in_flight.release()
            if self._idle >= MAX_IDLE:
                return
            self._idle += 1
            await self._turns.acquire()

    async def _next_request(self) -> bytes | None:
        """The next request line, with a slot of `in_flight` taken for it; None at the end of
        the stream or once an upgrade handler is done with the connection."""
        while True:
            try:
                line, too_large = await receive_line(self.reader)
            except (anyio.EndOfStream, anyio.IncompleteRead, anyio.BrokenResourceError, OSError):
                return None
            if too_large:  # answer it and read on: the connection is not at fault
                self._first = False
                with contextlib.suppress(
                    anyio.BrokenResourceError, anyio.ClosedResourceError, OSError
                ):
                    await self.send(_error(guess_id(line), INVALID_REQUEST, TOO_LARGE))
                continue
            if not line.strip():
                continue
            if self._first:
                self._first = False
                upgrade = self.upgrade(line)
                if upgrade is not None:
                    await upgrade
                    return None
            try:  # only the reading worker takes slots: no waiter is passed over
                self.in_flight.acquire_nowait()
            except anyio.WouldBlock:  # back-pressure, not an error
                await self.in_flight.acquire()
            return line

    def upgrade(self, line: bytes) -> Awaitable[None] | None:
        """When a connection's first request names one of the hub's upgrades (`mcp.open`),
        the connection is handed to that upgrade's handler for good."""
        if not any(name.encode() in line for name in self.hub.upgrades):
            return None  # the common case, without parsing the line twice
        try:
            req = json.loads(line)
        except (ValueError, RecursionError):  # answered as any bad request is
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

    async def _handle(self, line: bytes) -> None:
        """Answer one request line (a notification: run it, answer nothing)."""
        req_id = None
        notification = False  # a valid request without an id gets no reply
        try:
            try:
                req = json.loads(line)
            except ValueError as e:
                raise RpcError(PARSE_ERROR, f"not JSON: {e}") from None
            except RecursionError:
                raise RpcError(
                    INVALID_REQUEST, f"request nested too deeply (the limit is {MAX_DEPTH} levels)"
                ) from None
            if not isinstance(req, dict) or not isinstance(req.get("method"), str):
                raise RpcError(INVALID_REQUEST, "a request is an object with a string 'method'")
            req_id = req.get("id")
            if not (req_id is None or isinstance(req_id, int | str)) or isinstance(req_id, bool):
                req_id = None
                raise RpcError(INVALID_REQUEST, "id must be a string, a number or null")
            if isinstance(req_id, str) and has_surrogate(req_id):
                req_id = None
                raise RpcError(INVALID_REQUEST, "id contains a lone surrogate")
            notification = "id" not in req
            name = req["method"]
            params = req.get("params") or {}
            if not isinstance(params, dict):
                raise RpcError(INVALID_PARAMS, "params must be an object")
            model = PARAMS.get(name)
            if model is None:
                raise RpcError(METHOD_NOT_FOUND, f"unknown method {name[:100]!r}")
            try:
                check_json(params)
            except Rejected as e:
                raise RpcError(INVALID_PARAMS, str(e)) from None
            try:  # the caller's fault, checked before the call: a TypeError later is ours
                checked = model.__pydantic_validator__.validate_python(params)
            except ValidationError as e:
                raise _params_error(name, e) from None
            method = getattr(self, f"rpc_{name}")
            result = await method(**checked.__dict__)  # a Params model's __dict__: its fields
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
        if self.tg is None:  # the connection is ending
            raise RpcError(INVALID_REQUEST, "the connection is closing")
        self._next_sub += 1
        sid = str(self._next_sub)
        bus = self.hub.bus
        # owned by the connection from the moment it exists: closed with it, whatever fails
        sub = self.subs[sid] = bus.open_subscription(
            topics, name=f"ipc:{sid}", buffer=min(buffer, 65536)
        )
        try:
            backlog = (
                [e for e in bus.history(since) if sub.matches(e.topic)] if since is not None else []
            )
            self.tg.start_soon(self._pump, sid, sub, backlog)  # ends with the connection
        except BaseException:
            self.subs.pop(sid, None)
            bus.close_subscription(sub)
            raise
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
            self.subs.pop(sid, None)
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
        return Context(None, "ipc")  # positional: cheaper than with keywords
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


async def receive_line(reader: BufferedByteReceiveStream) -> tuple[bytes, bool]:
    """The next line and False, or, for a line over MAX_LINE, its first bytes and True
    (the rest skipped: the next line can still be read)."""
    try:
        line = await reader.receive_until(b"\n", MAX_LINE)
    except anyio.DelimiterNotFound:
        return await skip_line(reader), True
    if len(line) > MAX_LINE:  # its newline came in the chunk that crossed the limit
        return line[:4096], True
    return line, False


async def skip_line(reader: BufferedByteReceiveStream) -> bytes:
    """Drop the rest of an over-long line, up to and including its newline; returns its
    first bytes (where the request's id usually is). Bytes after the newline stay buffered."""
    head = bytearray()
    while True:
        chunk = await reader.receive(1 << 16)
        if len(head) < 4096:
            head += chunk[: 4096 - len(head)]
        end = chunk.find(b"\n")
        if end >= 0:
            reader.feed_data(chunk[end + 1 :])
            return bytes(head)
