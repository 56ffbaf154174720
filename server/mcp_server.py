"""`fleetbus serve`: the MCP front end.

Every exposed bus action becomes a tool (`runner.dispatch` -> `runner_dispatch`, since
Claude's API rejects dots) with its pydantic JSON Schema as input and output schema;
results are structured content plus a short readable line; failures are `isError` results
carrying the bus's one-line message. Channel messages on the bus become
`notifications/claude/channel` events for the session that caused them (see
`channels.py`). Built on the SDK's low-level `Server`, because the tools are only known at
run time, from the hub.
"""

from __future__ import annotations

import contextvars
import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import anyio
import anyio.abc
import anyio.to_thread
import mcp.types as types
from anyio.streams.buffered import BufferedByteReceiveStream
from anyio.streams.memory import MemoryObjectReceiveStream, MemoryObjectSendStream
from mcp.server import NotificationOptions, Server, ServerRequestContext
from mcp.server.models import InitializationOptions
from mcp.shared.exceptions import MCPError
from mcp.shared.uri_template import UriTemplate
from pydantic import BaseModel, ValidationError

from fleetbus.bus.client import Client
from fleetbus.bus.context import Context
from fleetbus.bus.errors import BusError, ConnectionFailed, InvalidInput
from fleetbus.bus.version import version
from fleetbus.plugins.runner.processes import tail

from .channels import COALESCE_WINDOW, SESSION_KEY, ChannelEvent, Coalescer, event_from_envelope
from .handshake import instructions
from .line_transport import line_streams
from .tools import WATCH_TOOL, WatchInput, tool_list, tool_name

log = logging.getLogger("fleetbus.mcp")

CHANNEL_METHOD = "notifications/claude/channel"
STATUS_URI = "fleetbus://status"
RUN_LOG = UriTemplate.parse("fleetbus://runs/{run_id}/log")
LOG_TAIL_BYTES = 64 * 1024
ENDED = {"completed", "failed", "blocked", "cancelled", "timeout"}
CHANNEL_BUFFER = 16384  # channel messages waiting for this server: a burst of 500 runs fits
CONNECTION: contextvars.ContextVar[str] = contextvars.ContextVar(
    "fleetbus_mcp_connection", default="stdio"
)
"""The relayed connection a request came in on (set by `FleetMCP.serve_lines`)."""


class ChannelParams(BaseModel):
    content: str
    meta: dict[str, str] = {}


class ChannelNotification(
    types.Notification[ChannelParams, Literal["notifications/claude/channel"]]  # type: ignore[type-var]
):
    method: Literal["notifications/claude/channel"] = "notifications/claude/channel"
    params: ChannelParams


def summary(action: str, result: Any) -> str:
    """A short line a person reads next to the structured result."""
    if isinstance(result, dict):
        if "run_id" in result and "status" in result:
            reason = f" ({result['reason']})" if result.get("reason") else ""
            return f"run {result['run_id']}: {result['status']}{reason}"
        if action == "runner.status" and "running" in result:
            counts = ", ".join(
                f"{k} {result[k]}" for k in ("running", "queued", "completed", "failed", "blocked")
            )
            return f"{counts}{'; frozen' if result.get('frozen') else ''}"
    text = json.dumps(result, default=str)
    return text if len(text) <= 1000 else text[:1000] + "…"


def error_result(message: str) -> types.CallToolResult:
    return types.CallToolResult(
        content=[types.TextContent(type="text", text=message)], is_error=True
    )


TOOLS_CHANGED = "tools/list_changed"  # queued to a session like an event
SESSION_BUFFER = 4096  # events waiting for one session; past that they are dropped, counted


@dataclass
class Session:
    """One MCP session's outbox: events wait in its own bounded stream, which only its own
    task drains, so a slow or closing client never holds up the others."""

    key: str
    outbox: MemoryObjectSendStream[ChannelEvent | str]
    dropped: int = 0
    inbox: MemoryObjectReceiveStream[ChannelEvent | str] | None = None  # until it is drained

    @classmethod
    def open(cls, key: str) -> Session:
        outbox, inbox = anyio.create_memory_object_stream[ChannelEvent | str](SESSION_BUFFER)
        return cls(key, outbox, inbox=inbox)

    def put(self, item: ChannelEvent | str) -> None:
        try:
            self.outbox.send_nowait(item)
        except anyio.WouldBlock:
            self.dropped += 1
        except (anyio.BrokenResourceError, anyio.ClosedResourceError):
            pass  # the session is going


class FleetServer(Server):
    """A low-level Server that advertises channels and list_changed on every transport."""

    def create_initialization_options(
        self,
        notification_options: NotificationOptions | None = None,
        experimental_capabilities: dict[str, dict[str, Any]] | None = None,
        extensions: Any = None,
    ) -> InitializationOptions:
        return super().create_initialization_options(
            notification_options or NotificationOptions(tools_changed=True),
            experimental_capabilities
            if experimental_capabilities is not None
            else {"claude/channel": {}},
            extensions,
        )


class FleetMCP:
    """The MCP face of one hub connection.

    `get_client` returns the current bus client (it may reconnect after a hub restart).
    """

    def __init__(
        self,
        get_client: Callable[[], Awaitable[Client]],
        *,
        coalesce_window: float = COALESCE_WINDOW,
        on_tools_changed: Callable[[list[dict[str, Any]]], None] | None = None,
    ) -> None:
        self.get_client = get_client
        self.on_tools_changed = on_tools_changed
        self.instance = secrets.token_hex(4)
        self.coalesce_window = coalesce_window
        self.actions: dict[str, dict[str, Any]] = {}  # tool name -> action info
        self.sessions: dict[str, Session] = {}
        self.server = FleetServer(
            "fleetbus",
            version=version(),
            instructions=instructions(None),
            on_list_tools=self.list_tools,
            on_call_tool=self.call_tool,
            on_list_resources=self.list_resources,
            on_list_resource_templates=self.list_resource_templates,
            on_read_resource=self.read_resource,
        )
        self.server.add_notification_handler(
            "notifications/initialized", types.NotificationParams, self.on_initialized
        )

    # -- sessions ----------------------------------------------------------------------------
    def session_key(self, ctx: ServerRequestContext[Any, Any]) -> str:
        request = ctx.request
        sid = request.headers.get("mcp-session-id") if request is not None else None
        return f"{self.instance}:{sid or CONNECTION.get()}"

    async def on_initialized(
        self, ctx: ServerRequestContext[Any, Any], params: types.NotificationParams | None
    ) -> None:
        """Register the session, then deliver its events until the connection ends."""
        key = self.session_key(ctx)
        session = ctx.session
        me = self.sessions.get(key)  # a relayed session is registered when it opens
        if me is None or me.inbox is None:
            me = self.sessions[key] = Session.open(key)
        inbox, me.inbox = me.inbox, None
        assert inbox is not None
        reported = 0

        async def send(event: ChannelEvent) -> None:
            nonlocal reported
            meta = event.meta
            if me.dropped > reported:  # say so on the next event that gets through
                log.warning(
                    "MCP session %s: %d events dropped (too slow)", key, me.dropped - reported
                )
                meta = {**meta, "dropped": str(me.dropped - reported)}
                reported = me.dropped
            note = ChannelNotification(params=ChannelParams(content=event.content, meta=meta))
            await session.send_notification(note)  # type: ignore[arg-type]

        log.info("MCP session %s joined", key)
        try:
            async with inbox, anyio.create_task_group() as tg:
                coalescer = Coalescer(send, tg, window=self.coalesce_window)
                async for item in inbox:
                    if isinstance(item, ChannelEvent):
                        await coalescer.push(item)
                    else:
                        await session.send_tool_list_changed()
        except Exception as e:  # this session's failure stays with it
            log.warning("MCP session %s: events stopped: %s: %s", key, type(e).__name__, e)
        finally:
            if self.sessions.get(key) is me:
                del self.sessions[key]
            me.outbox.close()
            log.info("MCP session %s left", key)

    def route(self, envelope: dict[str, Any]) -> None:
        """Queue an event to its session (or every session); never waits on a client."""
        event, owner = event_from_envelope(envelope)
        if owner is not None:
            target = self.sessions.get(owner)
            targets = [target] if target is not None else []  # another server's, or gone
        else:
            targets = list(self.sessions.values())
        for s in targets:
            s.put(event)

    async def serve_lines(
        self,
        key: str,
        reader: BufferedByteReceiveStream,
        stream: anyio.abc.ByteSendStream,
        *,
        prime: list[dict[str, Any]],
        drop_id: str,
    ) -> None:
        """Serve one MCP session over a byte stream of JSON lines (a relayed stdio client),
        after feeding it `prime` (the client's initialize, whose answer `drop_id` is not
        sent back: the relay gave it already)."""
        token = CONNECTION.set(key)
        session = self.sessions[key] = Session.open(key)  # events wait for `initialized`
        try:
            async with line_streams(reader, stream, prime=prime, drop_id=drop_id) as (read, write):
                await self.server.run(read, write, self.server.create_initialization_options())
        finally:
            CONNECTION.reset(token)
            if self.sessions.get(key) is session:
                del self.sessions[key]
            session.outbox.close()
            if session.inbox is not None:
                session.inbox.close()

    # -- the event pump ----------------------------------------------------------------------
    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Keep the tool list and channel events flowing until cancelled."""
        first = True
        while True:
            try:
                client = await self.get_client()
                changed = await self.refresh_actions(client)
                if changed or first:
                    await self.tools_changed(notify=not first)
                async with client.subscribe(
                    ["channel", "bus.actions_changed"], buffer=CHANNEL_BUFFER
                ) as messages:
                    if first:
                        task_status.started()
                        first = False
                    async for envelope in messages:
                        if envelope.get("topic") == "channel":
                            self.route(envelope)
                        elif await self.refresh_actions(client):
                            await self.tools_changed(notify=True)
            except ConnectionFailed as e:
                log.warning("lost the hub: %s; reconnecting", e)
            await anyio.sleep(0.2)  # the hub went away: reconnect (get_client restarts it)

    async def tools_changed(self, *, notify: bool) -> None:
        if self.on_tools_changed is not None:
            self.on_tools_changed(tool_list(self.actions.values()))
        if notify:
            for s in list(self.sessions.values()):
                s.put(TOOLS_CHANGED)

    async def refresh_actions(self, client: Client) -> bool:
        actions = {tool_name(a["name"]): a for a in await client.actions(exposed_only=True)}
        changed = actions.keys() != self.actions.keys()
        self.actions = actions
        return changed

    # -- tools -------------------------------------------------------------------------------
    async def list_tools(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListToolsResult:
        if not self.actions:
            await self.refresh_actions(await self.get_client())
        return types.ListToolsResult(tools=self.tools())

    def tools(self) -> list[types.Tool]:
        """Every exposed action as a tool, plus fleetbus_watch."""
        return [types.Tool.model_validate(t) for t in tool_list(self.actions.values())]

    async def call_tool(
        self, ctx: ServerRequestContext[Any, Any], params: types.CallToolRequestParams
    ) -> types.CallToolResult:
        try:
            if params.name == WATCH_TOOL:
                return await self.watch(ctx, params.arguments or {})
            action = self.actions.get(params.name)
            if action is None:
                known = ", ".join(sorted([*self.actions, WATCH_TOOL]))
                return error_result(f"unknown tool {params.name!r}; the tools are: {known}")
            context = Context(
                caller=f"mcp:{self.session_key(ctx)}", origin={SESSION_KEY: self.session_key(ctx)}
            )
            client = await self.get_client()
            result = await client.perform(action["name"], params.arguments or {}, context=context)
        except BusError as e:
            return error_result(e.message)
        except Exception as e:  # a bug of ours: a clear line, never a traceback or code 0
            log.exception("tool %s failed", params.name)
            return error_result(f"internal error in fleetbus: {type(e).__name__}: {e}")
        structured = result if isinstance(result, dict) else None
        if action["output_schema"] and structured is None:
            structured = {}
        return types.CallToolResult(
            content=[types.TextContent(type="text", text=summary(action["name"], result))],
            structured_content=structured,
        )

    async def watch(
        self, ctx: ServerRequestContext[Any, Any], arguments: dict[str, Any]
    ) -> types.CallToolResult:
        try:
            req = WatchInput.model_validate(arguments)
        except ValidationError as e:
            raise InvalidInput.from_validation(WATCH_TOOL, e) from None
        if req.task_ids:
            raise InvalidInput.from_errors(
                WATCH_TOOL,
                [
                    {
                        "field": "task_ids",
                        "message": "tasks need the agentic service, which this hub does not run; pass run_ids",
                    }
                ],
            )
        if not req.run_ids:
            raise InvalidInput.from_errors(
                WATCH_TOOL, [{"field": "run_ids", "message": "give at least one run id"}]
            )
        client = await self.get_client()
        states: dict[str, dict[str, Any]] = {}
        async with client.subscribe(["runner.run_completed"]) as messages:
            for run_id in dict.fromkeys(req.run_ids):
                status = await client.perform("runner.status", {"run_id": run_id, "limit": 1})
                if not status["runs"]:
                    raise InvalidInput.from_errors(
                        WATCH_TOOL, [{"field": "run_ids", "message": f"no run {run_id!r}"}]
                    )
                run = status["runs"][0]
                states[run_id] = {
                    "run_id": run_id,
                    "status": run["status"],
                    "exit_code": run["exit_code"],
                    "reason": run["reason"],
                }
            ended = [s for s in states.values() if s["status"] in ENDED]
            timed_out = False
            if not ended:
                timed_out = True
                start = anyio.current_time()
                with anyio.move_on_after(req.timeout_s):
                    async with anyio.create_task_group() as tg:

                        async def progress() -> None:
                            while True:
                                await anyio.sleep(5)
                                waited = anyio.current_time() - start
                                await ctx.session.report_progress(
                                    waited, req.timeout_s, f"waiting for {len(states)} run(s)"
                                )

                        tg.start_soon(progress)
                        async for envelope in messages:
                            data = envelope.get("data", {})
                            if data.get("run_id") in states:
                                states[data["run_id"]].update(
                                    status=data["status"],
                                    exit_code=data.get("exit_code"),
                                    reason=data.get("reason", ""),
                                )
                                timed_out = False
                                tg.cancel_scope.cancel()
                                break
        ended_runs = [s for s in states.values() if s["status"] in ENDED]
        result = {
            "ended": ended_runs,
            "pending": [s for s in states.values() if s["status"] not in ENDED],
            "timed_out": timed_out,
        }
        lines = [f"{s['run_id']} {s['status']}" for s in ended_runs] or ["none ended yet"]
        return types.CallToolResult(
            content=[types.TextContent(type="text", text="; ".join(lines))],
            structured_content=result,
        )

    # -- resources ---------------------------------------------------------------------------
    async def list_resources(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourcesResult:
        return types.ListResourcesResult(
            resources=[
                types.Resource(
                    uri=STATUS_URI,
                    name="status",
                    mime_type="application/json",
                    description="The fleet: run counts, lanes, frozen state and recent runs.",
                )
            ]
        )

    async def list_resource_templates(
        self, ctx: ServerRequestContext[Any, Any], params: types.PaginatedRequestParams | None
    ) -> types.ListResourceTemplatesResult:
        return types.ListResourceTemplatesResult(
            resource_templates=[
                types.ResourceTemplate(
                    uri_template="fleetbus://runs/{run_id}/log",
                    name="run-log",
                    mime_type="text/plain",
                    description="The end of a run's output (the last 64 KiB).",
                )
            ]
        )

    async def read_resource(
        self, ctx: ServerRequestContext[Any, Any], params: types.ReadResourceRequestParams
    ) -> types.ReadResourceResult:
        uri = str(params.uri)
        client = await self.get_client()
        try:
            if uri == STATUS_URI:
                status = await client.perform("runner.status", {"limit": 20})
                text = json.dumps(status, indent=2, default=str)
                return types.ReadResourceResult(
                    contents=[
                        types.TextResourceContents(uri=uri, mime_type="application/json", text=text)
                    ]
                )
            match = RUN_LOG.match(uri)
            if match is not None:
                run_id = str(match["run_id"])
                status = await client.perform("runner.status", {"run_id": run_id, "limit": 1})
                if not status["runs"]:
                    raise MCPError(code=types.INVALID_PARAMS, message=f"no run {run_id!r}")
                text = await tail_text(status["runs"][0].get("log"))
                return types.ReadResourceResult(
                    contents=[
                        types.TextResourceContents(uri=uri, mime_type="text/plain", text=text)
                    ]
                )
        except BusError as e:
            raise MCPError(code=types.INVALID_PARAMS, message=e.message) from e
        raise MCPError(
            code=types.INVALID_PARAMS, message=f"unknown resource {uri}; see resources/list"
        )


async def tail_text(path: str | None) -> str:
    """The end of a run's log, read in a worker thread, regular files only (an agent can
    replace its log with a FIFO: it must not hang the session)."""
    if not path:
        return "(this run has no log yet)"
    log_path = Path(path)
    exists = await anyio.to_thread.run_sync(log_path.exists)
    if not exists:
        return "(this run has no log yet)"
    data = await anyio.to_thread.run_sync(tail, log_path, LOG_TAIL_BYTES + 1)
    return data if len(data) <= LOG_TAIL_BYTES else "…" + data[-LOG_TAIL_BYTES:]
