"""An MCP session's streams over a byte stream of JSON lines: what the SDK's stdio transport
does for a process's pipes, done for a relayed connection inside the hub.

`line_streams` reads lines (a message over the IPC line limit is answered and skipped: the
session is not at fault), feeds the SDK session the `prime` messages first, and writes the
session's messages back, dropping the answer whose id is `drop_id` (the relay gave it).

A session may have `MAX_IN_FLIGHT` requests unanswered, as on the hub's socket; past that
its next line is not read until one is answered or cancelled (back-pressure, not an
error), so a client pipelining thousands of calls cannot fill the hub with tasks.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
import anyio.abc
import mcp.types as types
from anyio.streams.buffered import BufferedByteReceiveStream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.shared.message import SessionMessage

from fleetbus.bus.ipc import MAX_IN_FLIGHT, receive_line
from fleetbus.bus.wire import TOO_LARGE, guess_id

ReadStream = MemoryObjectReceiveStream[SessionMessage | Exception]
WriteStream = MemoryObjectSendStream[SessionMessage]


def too_large(req_id: Any) -> types.JSONRPCError:
    """The answer to a message over the line limit (its id when it leads the message)."""
    return types.JSONRPCError(
        jsonrpc="2.0",
        id=req_id,
        error=types.ErrorData(code=types.INVALID_REQUEST, message=TOO_LARGE),
    )


@asynccontextmanager
async def line_streams(
    reader: BufferedByteReceiveStream,
    stream: anyio.abc.ByteSendStream,
    *,
    prime: list[dict[str, Any]],
    drop_id: str,
) -> AsyncIterator[tuple[ReadStream, WriteStream]]:
    """The (read, write) pair a `Server.run` takes; on exit every message the session
    wrote has been sent (the server closes the write side when it ends)."""
    read_send, read_recv = anyio.create_memory_object_stream[SessionMessage | Exception](16)
    write_send, write_recv = anyio.create_memory_object_stream[SessionMessage](16)
    written = anyio.Event()
    slots = anyio.Semaphore(MAX_IN_FLIGHT)
    unanswered: set[str] = set()  # the JSON of each in-flight request's id

    def answered(req_id: Any) -> None:
        key = json.dumps(req_id)
        if key in unanswered:
            unanswered.discard(key)
            slots.release()

    async def read_lines() -> None:
        async with read_send:
            for obj in prime:
                await read_send.send(
                    SessionMessage(types.jsonrpc_message_adapter.validate_python(obj))
                )
            while True:
                try:
                    line, over = await receive_line(reader)
                except (anyio.EndOfStream, anyio.IncompleteRead):
                    return
                except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                    return
                if over:  # refuse it and read on: the session is not at fault
                    with contextlib.suppress(anyio.BrokenResourceError, anyio.ClosedResourceError):
                        await write_send.send(SessionMessage(too_large(guess_id(line))))
                    continue
                if not line.strip():
                    continue
                try:
                    message = types.jsonrpc_message_adapter.validate_json(line, by_name=False)
                except Exception as e:
                    await read_send.send(e)
                    continue
                if isinstance(message, types.JSONRPCRequest):
                    await slots.acquire()
                    unanswered.add(json.dumps(message.id))
                elif (
                    isinstance(message, types.JSONRPCNotification)
                    and message.method == "notifications/cancelled"
                    and isinstance(message.params, dict)
                ):  # a cancelled request may never be answered
                    answered(message.params.get("requestId"))
                await read_send.send(SessionMessage(message))

    async def write_lines() -> None:
        try:
            async with write_recv:
                async for item in write_recv:
                    message = item.message
                    if isinstance(message, types.JSONRPCResponse | types.JSONRPCError):
                        answered(message.id)
                    if getattr(message, "id", None) == drop_id and not hasattr(message, "method"):
                        continue
                    data = message.model_dump_json(by_alias=True, exclude_unset=True)
                    try:  # errors="replace": never a lone surrogate on the wire
                        await stream.send(data.encode(errors="replace") + b"\n")
                    except (anyio.BrokenResourceError, anyio.ClosedResourceError, OSError):
                        return
        finally:
            written.set()

    async with anyio.create_task_group() as tg:
        tg.start_soon(read_lines)
        tg.start_soon(write_lines)
        yield read_recv, write_send
        await written.wait()
        tg.cancel_scope.cancel()
