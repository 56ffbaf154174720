"""Clients of the bus: `HubClient` over the IPC socket, `LocalClient` in-process.

Both offer the same coroutine API (`perform`, `perform_async`, `job`, `query`,
`actions`, `plugins`, `status`, `subscribe`), with results as JSON-ready data, so the CLI
and the MCP front end do not care where the hub runs. `connect()` finds the hub of a home,
starting a detached one when none is running.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any, Protocol

import anyio
import anyio.abc
import anyio.to_thread
from anyio.streams.buffered import BufferedByteReceiveStream
from anyio.streams.memory import MemoryObjectSendStream

from .blockingclient import HUB_CLOSED, reply_error, too_large_request
from .context import Context
from .core import dump_result
from .errors import BusError, ConnectionFailed, InvalidInput, unwrap_group
from .hubstart import START_TIMEOUT, can_connect, check_socket_owner, ensure_hub_blocking
from .ipc import receive_line
from .paths import Home
from .wire import MAX_LINE, TOO_LARGE, encode, guess_id


class Client(Protocol):
    async def perform(
        self,
        action: str,
        payload: Any = None,
        *,
        context: Context | None = None,
        timeout: float | None = None,
    ) -> Any: ...
    async def perform_async(
        self, action: str, payload: Any = None, *, context: Context | None = None
    ) -> str: ...
    async def job(self, job_id: str, *, wait: float | None = None) -> dict[str, Any]: ...
    async def query(
        self, type_name: str, data: Mapping[str, Any] | None = None, *, all: bool = False
    ) -> Any: ...
    async def actions(self, *, exposed_only: bool = False) -> list[dict[str, Any]]: ...
    async def plugins(self) -> dict[str, Any]: ...
    async def status(self) -> dict[str, Any]: ...
    def subscribe(
        self, topics: list[str] | None = None, *, since: int | None = None, buffer: int = 1024
    ) -> contextlib.AbstractAsyncContextManager[AsyncIterator[dict[str, Any]]]: ...


UNDO_TIMEOUT = 10.0  # how long a cancelled subscribe/unsubscribe still waits for the hub


class _Reply:
    """One awaited JSON-RPC reply (an Event and a slot: cheaper than a stream per call)."""

    __slots__ = ("event", "value")

    def __init__(self) -> None:
        self.event = anyio.Event()
        self.value: dict[str, Any] = {}

    def set(self, value: dict[str, Any]) -> None:
        self.value = value
        self.event.set()

    async def wait(self) -> dict[str, Any]:
        await self.event.wait()
        return self.value


class HubClient:
    """A connection to a hub's socket. Use `async with HubClient.open(path) as client`."""

    def __init__(self, stream: anyio.abc.SocketStream) -> None:
        self._stream = stream
        self._reader = BufferedByteReceiveStream(stream)
        self._ids = itertools.count(1)
        self._pending: dict[int, _Reply] = {}
        self._subs: dict[str, MemoryObjectSendStream[dict[str, Any]]] = {}
        self._early: dict[str, list[dict[str, Any]]] = {}
        self._subscribing = 0  # subscribe calls awaiting their answer
        self._send_lock = anyio.Lock(fast_acquire=True)
        self._closed = False
        self.disconnected = anyio.Event()  # set when the hub closes the connection

    @classmethod
    @asynccontextmanager
    async def open(cls, path: Path) -> AsyncIterator[HubClient]:
        try:
            stream = await anyio.connect_unix(path)
        except OSError as e:
            raise ConnectionFailed(f"cannot connect to the hub at {path}: {e.strerror or e}") from e
        client = cls(stream)
        try:
            with unwrap_group():
                async with anyio.create_task_group() as tg:
                    tg.start_soon(client._read_loop)
                    try:
                        yield client
                    finally:
                        client._closed = True
                        tg.cancel_scope.cancel()
        finally:
            # closed only once the read loop has ended, its reader gone from the event
            # loop: anyio closes a socket before it drops a pending read's registration,
            # and asyncio's selector then keeps the dead entry, which the next file of the
            # same number (an agent's pidfd) inherits without ever being polled
            with anyio.CancelScope(shield=True), contextlib.suppress(Exception):
                await stream.aclose()

    async def _read_loop(self) -> None:
        try:
            while True:
                line, too_large = await receive_line(self._reader)
                if too_large:  # a reply too large: fail its caller only
                    waiter = self._pending.pop(guess_id(line), None)
                    if waiter is not None:
                        waiter.set(
                            {"error": {"code": -32603, "message": f"the reply was a {TOO_LARGE}"}}
                        )
                    continue
                msg = json.loads(line)
                if "id" in msg and msg["id"] is not None and ("result" in msg or "error" in msg):
                    waiter = self._pending.pop(msg["id"], None)
                    if waiter is not None:
                        waiter.set(msg)
                elif msg.get("method") == "message":
                    params = msg.get("params", {})
                    sid = str(params.get("subscription"))
                    target = self._subs.get(sid)
                    if target is not None:
                        with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError):
                            target.send_nowait(params)
                    elif self._subscribing:  # may have arrived before subscribe() returned
                        self._early.setdefault(sid, []).append(params)
        except (
            anyio.EndOfStream,
            anyio.IncompleteRead,
            anyio.BrokenResourceError,
            anyio.ClosedResourceError,
            OSError,
        ):
            pass
        finally:
            lost = {
                "error": {
                    "code": -32000,
                    "message": HUB_CLOSED,
                    "data": {"type": "ConnectionFailed", "message": HUB_CLOSED},
                }
            }
            for waiter in self._pending.values():
                waiter.set(lost)
            self._pending.clear()
            for target in self._subs.values():
                target.close()
            self._closed = True
            self.disconnected.set()

    async def call(self, method: str, params: Mapping[str, Any] | None = None) -> Any:
        """Send one request and wait for its reply; errors come back as BusError subclasses."""
        if self._closed:
            raise ConnectionFailed("the connection to the hub is closed")
        req_id = next(self._ids)
        req = {"jsonrpc": "2.0", "id": req_id, "method": method, "params": dict(params or {})}
        data = encode(req)
        if len(data) > MAX_LINE:  # the hub would refuse it: say so without sending it
            raise too_large_request(method, params or {})
        waiter = self._pending[req_id] = _Reply()
        try:
            async with self._send_lock:
                await self._stream.send(data)
            reply = await waiter.wait()
        except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError) as e:
            raise ConnectionFailed(f"lost the connection to the hub: {e}") from e
        finally:
            self._pending.pop(req_id, None)
        if "error" in reply:
            raise reply_error(reply["error"])
        return reply.get("result")

    async def perform(
        self,
        action: str,
        payload: Any = None,
        *,
        context: Context | None = None,
        timeout: float | None = None,
    ) -> Any:
        params: dict[str, Any] = {"action": action, "input": payload}
        if context is not None:
            params["context"] = context.to_dict()
        if timeout is not None:
            params["timeout"] = timeout
        return await self.call("perform", params)

    async def perform_async(
        self, action: str, payload: Any = None, *, context: Context | None = None
    ) -> str:
        params: dict[str, Any] = {"action": action, "input": payload, "background": True}
        if context is not None:
            params["context"] = context.to_dict()
        result = await self.call("perform", params)
        return str(result["job_id"])

    async def job(self, job_id: str, *, wait: float | None = None) -> dict[str, Any]:
        return dict(await self.call("job", {"job_id": job_id, "wait": wait}))

    async def query(
        self, type_name: str, data: Mapping[str, Any] | None = None, *, all: bool = False
    ) -> Any:
        return await self.call("query", {"type": type_name, "data": dict(data or {}), "all": all})

    async def actions(self, *, exposed_only: bool = False) -> list[dict[str, Any]]:
        return list(await self.call("actions", {"exposed_only": exposed_only}))

    async def plugins(self) -> dict[str, Any]:
        return dict(await self.call("plugins"))

    async def status(self) -> dict[str, Any]:
        return dict(await self.call("status"))

    async def hello(self) -> dict[str, Any]:
        return dict(await self.call("hello"))

    async def shutdown(self) -> dict[str, Any]:
        return dict(await self.call("shutdown"))

    @asynccontextmanager
    async def subscribe(
        self, topics: list[str] | None = None, *, since: int | None = None, buffer: int = 1024
    ) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        """Yield an iterator of message envelopes (dicts with seq, topic, data, context)."""
        send, receive = anyio.create_memory_object_stream[dict[str, Any]](buffer)
        params: dict[str, Any] = {"topics": topics, "buffer": buffer}
        if since is not None:
            params["since"] = since
        # The subscription lives exactly as long as this block: once asked, the hub
        # subscribes, so the answer is awaited even by a cancelled caller, to undo it.
        result: Any = None
        self._subscribing += 1
        try:
            with anyio.CancelScope(shield=True), anyio.move_on_after(UNDO_TIMEOUT):
                result = await self.call("subscribe", params)
        finally:
            self._subscribing -= 1
            early_ones = self._early.pop(str((result or {}).get("subscription")), [])
            if not self._subscribing:
                self._early.clear()  # late messages of ended subscriptions: never read
        if result is None:
            raise ConnectionFailed(f"the hub did not answer subscribe within {UNDO_TIMEOUT:g}s")
        sid = str(result["subscription"])
        self._subs[sid] = send
        for early in early_ones[:buffer]:
            send.send_nowait(early)
        try:
            async with receive:
                yield receive
        finally:
            self._subs.pop(sid, None)
            self._early.pop(sid, None)
            send.close()
            if not self._closed:  # also when the caller was cancelled
                with (
                    anyio.CancelScope(shield=True),
                    anyio.move_on_after(UNDO_TIMEOUT),
                    contextlib.suppress(BusError),
                ):
                    await self.call("unsubscribe", {"subscription": sid})


class LocalClient:
    """The same API as HubClient, talking to a Hub in this process (`--embedded`)."""

    def __init__(self, hub: Any) -> None:
        self.hub = hub

    async def perform(
        self,
        action: str,
        payload: Any = None,
        *,
        context: Context | None = None,
        timeout: float | None = None,
    ) -> Any:
        return dump_result(
            await self.hub.bus.perform(action, payload, context=context, timeout=timeout)
        )

    async def perform_async(
        self, action: str, payload: Any = None, *, context: Context | None = None
    ) -> str:
        return str(self.hub.bus.start_job(action, payload, context=context))

    async def job(self, job_id: str, *, wait: float | None = None) -> dict[str, Any]:
        job = self.hub.bus.job(job_id)
        if job is None:
            raise InvalidInput.from_errors(
                "job", [{"field": "job_id", "message": f"no job {job_id!r}"}]
            )
        if wait:
            with anyio.move_on_after(wait):
                await job.done.wait()
        return dict(job.info())

    async def query(
        self, type_name: str, data: Mapping[str, Any] | None = None, *, all: bool = False
    ) -> Any:
        cls = self.hub.bus.query_types().get(type_name)
        if cls is None:
            raise InvalidInput.from_errors(
                "query", [{"field": "type", "message": f"unknown query {type_name!r}"}]
            )
        q = cls.model_validate(dict(data or {}))
        if all:
            return [dump_result(a) for a in await self.hub.bus.query_all(q)]
        return dump_result(await self.hub.bus.query(q))

    async def actions(self, *, exposed_only: bool = False) -> list[dict[str, Any]]:
        return list(self.hub.bus.list_actions(exposed_only=exposed_only))

    async def plugins(self) -> dict[str, Any]:
        ps = self.hub.plugins
        return {
            "plugins": [i.to_dict() for i in ps.infos],
            "skipped": [{"name": n, "why": w} for n, w in ps.skipped],
        }

    async def status(self) -> dict[str, Any]:
        return dict(self.hub.status())

    @asynccontextmanager
    async def subscribe(
        self, topics: list[str] | None = None, *, since: int | None = None, buffer: int = 1024
    ) -> AsyncIterator[AsyncIterator[dict[str, Any]]]:
        bus = self.hub.bus
        with bus.subscription(topics, name="local", buffer=buffer) as sub:
            backlog = (
                [e.to_dict() for e in bus.history(since) if sub.matches(e.topic)]
                if since is not None
                else []
            )

            async def iterate() -> AsyncIterator[dict[str, Any]]:
                for item in backlog:
                    yield item
                async for env in sub:
                    yield env.to_dict()

            yield iterate()


# -- finding or starting the hub -------------------------------------------------------------
async def ensure_hub(
    home: Home, *, env: Mapping[str, str] = os.environ, timeout: float = START_TIMEOUT
) -> Path:
    """Return the socket of the home's hub, starting a detached hub if none answers."""
    path = home.socket
    check_socket_owner(path)
    if await anyio.to_thread.run_sync(can_connect, path):
        return path
    return await anyio.to_thread.run_sync(ensure_hub_blocking, home, env, timeout)


@asynccontextmanager
async def connect(
    home: Home | None = None,
    *,
    embedded: bool = False,
    autostart: bool = True,
    env: Mapping[str, str] = os.environ,
) -> AsyncIterator[Client]:
    """A client for the home's hub: in-process with `embedded`, else over its socket."""
    home = home or Home.from_env(env)
    if embedded:
        from .hub import Hub

        hub = Hub(home, env=env, idle_timeout=0)
        with unwrap_group():
            async with anyio.create_task_group() as tg:
                await tg.start(hub.run)
                try:
                    yield LocalClient(hub)
                finally:
                    hub.request_stop()
        return
    if autostart:
        path = await ensure_hub(home, env=env)
    else:
        path = home.socket
        check_socket_owner(path)
    async with HubClient.open(path) as client:
        yield client
