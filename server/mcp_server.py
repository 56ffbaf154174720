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

import json
import logging
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal

import anyio
import anyio.abc
import mcp.types as types
from mcp.server import NotificationOptions, Server, ServerRequestContext
from mcp.server.models import InitializationOptions
from mcp.server.session import ServerSession
from mcp.shared.exceptions import MCPError
from mcp.shared.uri_template import UriTemplate
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleetbus.bus.client import Client
from fleetbus.bus.context import Context
from fleetbus.bus.errors import BusError, ConnectionFailed, InvalidInput
from fleetbus.bus.hub import version

from .channels import SESSION_KEY, ChannelEvent, Coalescer, event_from_envelope

log = logging.getLogger("fleetbus.mcp")

CHANNEL_METHOD = "notifications/claude/channel"
WATCH_TOOL = "fleetbus_watch"
STATUS_URI = "fleetbus://status"
RUN_LOG = UriTemplate.parse("fleetbus://runs/{run_id}/log")
LOG_TAIL_BYTES = 64 * 1024
ENDED = {"completed", "failed", "blocked", "cancelled", "timeout"}

INSTRUCTIONS = """\
fleetbus runs coding agents (codex, claude, gemini, shell, or any configured command) in
isolated workspaces, under concurrency limits and a persistent queue.

- Start work with runner_dispatch {agent, prompt, workspace}. It returns at once with a
  run_id and status `running`, or `queued` with the reason (frozen, lane full, rate delay,
  backoff, session busy). Do not poll.
- When a run starts, finishes, fails, times out or blocks, a <channel source="fleetbus">
  event arrives: one readable line, with meta run_id, workspace, agent and status (a burst
  arrives as one event whose meta run_ids lists the runs). Events about runs you started
  come to this session; fleet-wide events (queue drained, rate limits) to every session.
- status `blocked` means the agent stopped with a question (quoted in the event). Answer it
  with runner_dispatch to the same workspace, session_mode "followup", the answer as the
  prompt: the new run gets the previous run's output as context.
- fleetbus_watch {run_ids, timeout_s <= 100} waits until one of the runs ends.
- runner_status shows counts, lanes and recent runs; the resource
  fleetbus://runs/{run_id}/log holds a run's output. runner_stop / runner_start freeze and
  unfreeze dispatch; runner_kill stops runs.
"""


class ChannelParams(BaseModel):
    content: str
    meta: dict[str, str] = {}


class ChannelNotification(
    types.Notification[ChannelParams, Literal["notifications/claude/channel"]]  # type: ignore[type-var]
):
    method: Literal["notifications/claude/channel"] = "notifications/claude/channel"
    params: ChannelParams


class WatchInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_ids: list[str] = Field(
        default_factory=list, max_length=100, description="Runs to wait for."
    )
    task_ids: list[str] = Field(
        default_factory=list, max_length=100, description="Tasks to wait for (agentic service)."
    )
    timeout_s: float = Field(
        60, ge=0, le=100, description="Return after this many seconds at most."
    )


WATCH_DESCRIPTION = (
    "Wait until any of the given runs ends (completed, failed, blocked, cancelled or timeout) "
    "and return how they stand; returns at the latest after timeout_s (at most 100 s), with "
    "progress notifications while it waits."
)


def tool_name(action: str) -> str:
    return action.replace(".", "_")


class _Recursive(Exception):
    pass


def lean_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The same constraints, cheaper for a client to check on every result: `$defs`
    inlined, `anyOf [X, null]` as a type list, titles dropped. A schema whose references
    cannot all be inlined (a recursive model) is returned unchanged."""
    defs = schema.get("$defs", {})

    def walk(node: Any, seen: frozenset[str]) -> Any:
        if isinstance(node, list):
            return [walk(v, seen) for v in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/") and len(node) == 1:
            name = ref.removeprefix("#/$defs/")
            if name in seen or name not in defs:
                raise _Recursive
            return walk(defs[name], seen | {name})
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in ("$defs", "title"):
                continue
            if key in ("properties", "patternProperties") and isinstance(value, dict):
                out[key] = {name: walk(v, seen) for name, v in value.items()}
            else:
                out[key] = walk(value, seen)
        any_of = out.get("anyOf")
        if isinstance(any_of, list) and all(
            isinstance(x, dict) and set(x) == {"type"} and isinstance(x["type"], str)
            for x in any_of
        ):
            del out["anyOf"]
            out["type"] = [x["type"] for x in any_of]
        return out

    try:
        lean = dict(walk(schema, frozenset()))
    except _Recursive:
        return schema
    return schema if "$ref" in json.dumps(lean) else lean  # a reference left: keep $defs


def object_schema(schema: dict[str, Any] | None) -> dict[str, Any]:
    """MCP wants an object at the root of an input schema."""
    if not schema or schema.get("type") != "object":
        return {"type": "object", "properties": {}}
    return schema


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


@dataclass
class Session:
    key: str
    session: ServerSession
    coalescer: Coalescer


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
        coalesce_window: float = 0.5,
    ) -> None:
        self.get_client = get_client
        self.instance = secrets.token_hex(4)
        self.coalesce_window = coalesce_window
        self.actions: dict[str, dict[str, Any]] = {}  # tool name -> action info
        self.sessions: dict[str, Session] = {}
        self.tg: anyio.abc.TaskGroup | None = None
        self.server = FleetServer(
            "fleetbus",
            version=version(),
            instructions=INSTRUCTIONS,
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
        return f"{self.instance}:{sid or 'stdio'}"

    async def on_initialized(
        self, ctx: ServerRequestContext[Any, Any], params: types.NotificationParams | None
    ) -> None:
        key = self.session_key(ctx)
        session = ctx.session

        async def send(event: ChannelEvent) -> None:
            note = ChannelNotification(params=ChannelParams(content=event.content, meta=event.meta))
            await session.send_notification(note)  # type: ignore[arg-type]

        if self.tg is None:
            raise RuntimeError("FleetMCP.run() is not running")
        self.sessions[key] = Session(
            key, session, Coalescer(send, self.tg, window=self.coalesce_window)
        )
        log.info("MCP session %s joined", key)
        try:
            await anyio.sleep_forever()  # cancelled when the connection ends
        finally:
            self.sessions.pop(key, None)
            log.info("MCP session %s left", key)

    async def route(self, envelope: dict[str, Any]) -> None:
        event, owner = event_from_envelope(envelope)
        if owner is not None:
            target = self.sessions.get(owner)
            targets = [target] if target is not None else []  # another server's, or gone
        else:
            targets = list(self.sessions.values())
        for s in targets:
            await s.coalescer.push(event)

    # -- the event pump ----------------------------------------------------------------------
    async def run(
        self, *, task_status: anyio.abc.TaskStatus[None] = anyio.TASK_STATUS_IGNORED
    ) -> None:
        """Keep the tool list and channel events flowing until cancelled."""
        async with anyio.create_task_group() as tg:
            self.tg = tg
            first = True
            while True:
                try:
                    client = await self.get_client()
                    changed = await self.refresh_actions(client)
                    if changed and not first:
                        for s in list(self.sessions.values()):
                            await s.session.send_tool_list_changed()
                    async with client.subscribe(["channel", "bus.actions_changed"]) as messages:
                        if first:
                            task_status.started()
                            first = False
                        async for envelope in messages:
                            if envelope.get("topic") == "channel":
                                await self.route(envelope)
                            elif await self.refresh_actions(client):
                                for s in list(self.sessions.values()):
                                    await s.session.send_tool_list_changed()
                except ConnectionFailed as e:
                    log.warning("lost the hub: %s; reconnecting", e)
                await anyio.sleep(0.2)  # the hub went away: reconnect (get_client restarts it)

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
        tools = [
            types.Tool(
                name=name,
                description=a["description"] or a["name"],
                input_schema=object_schema(a["input_schema"]),
                output_schema=lean_schema(a["output_schema"])
                if (a["output_schema"] or {}).get("type") == "object"
                else None,
                annotations=types.ToolAnnotations(
                    title=a["name"],
                    read_only_hint=not a["mutating"],
                    destructive_hint=bool(a["destructive"]),
                ),
            )
            for name, a in sorted(self.actions.items())
        ]
        tools.append(
            types.Tool(
                name=WATCH_TOOL,
                description=WATCH_DESCRIPTION,
                input_schema=WatchInput.model_json_schema(),
                annotations=types.ToolAnnotations(
                    title="fleetbus watch", read_only_hint=True, destructive_hint=False
                ),
            )
        )
        return types.ListToolsResult(tools=tools)

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
                text = tail_text(status["runs"][0].get("log"))
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


def tail_text(path: str | None) -> str:
    if not path:
        return "(this run has no log yet)"
    try:
        with open(path, "rb") as f:
            f.seek(0, 2)
            size = f.tell()
            f.seek(max(0, size - LOG_TAIL_BYTES))
            data = f.read().decode(errors="replace")
    except FileNotFoundError:
        return "(this run has no log yet)"
    return data if size <= LOG_TAIL_BYTES else "…" + data
