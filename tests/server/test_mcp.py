"""The MCP front end with the SDK's real client: `fleetbus serve` over stdio as a real
subprocess (the issue's acceptance), and `FleetMCP` in-process on a real embedded hub
(`fleet(home, env, embedded=True)` + `Client(app.server, mode="legacy")`).

Channel events need the handshake-era protocol (`mode="legacy"` / `ClientSession`) and a
`NotificationBinding` for `notifications/claude/channel`; the tests wait on the events
themselves (`Inbox.wait_for`, bounded by `anyio.fail_after`), never on fixed sleeps. Every
agent is short, or killed by its test; `reap_runs` kills what a failing test left behind,
and the `home` fixture stops the hub.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import jsonschema  # type: ignore[import-untyped]
import mcp.types as types
import psutil
import pytest
from mcp import Client, ClientSession, StdioServerParameters, stdio_client
from mcp.client import ClientExtension, NotificationBinding
from mcp.shared.exceptions import MCPError
from pydantic import BaseModel

from fleetbus.bus.paths import Home
from fleetbus.server.mcp_server import FleetMCP
from fleetbus.server.serve import fleet
from fleetbus.testing.hub import cli_command
from fleetbus.testing.processes import reap_runs

pytestmark = pytest.mark.anyio

Cli = Callable[..., subprocess.CompletedProcess[str]]

CHANNEL_METHOD = "notifications/claude/channel"
META_KEY = re.compile(r"^[A-Za-z0-9_]+$")
STATUSES = "queued|running|completed|failed|blocked|cancelled|timeout"
ENDED = {"completed", "failed", "blocked", "cancelled", "timeout"}
TOOLS = {
    "runner_dispatch",
    "runner_status",
    "runner_stop",
    "runner_start",
    "runner_kill",
    "runner_poke",
    "fleetbus_watch",
}

CONFIG = """\
agents:
  sleepy:
    command: ["sh", "-c", "sleep 1; echo done", "{prompt}"]
    prompt: arg
    concurrency: 2
  quick:
    command: ["sh", "-c", "echo hi", "{prompt}"]
    prompt: arg
    concurrency: 4
  slow3:
    command: ["sh", "-c", "sleep 3; echo done", "{prompt}"]
    prompt: arg
  long:
    command: ["sh", "-c", "sleep 30", "{prompt}"]
    prompt: arg
"""


# -- channel events ---------------------------------------------------------------------------
class ChannelIn(BaseModel):
    """A channel notification's params as sent (types are checked by the tests)."""

    content: Any = None
    meta: dict[str, Any] = {}


class Inbox:
    """Collects a session's channel events; `wait_for` wakes on each new one."""

    def __init__(self) -> None:
        self.events: list[ChannelIn] = []
        self._changed = anyio.Event()

    async def on_channel(self, params: ChannelIn) -> None:
        self.events.append(params)
        self._changed.set()
        self._changed = anyio.Event()

    def binding(self) -> NotificationBinding[ChannelIn]:
        return NotificationBinding(
            method=CHANNEL_METHOD, params_type=ChannelIn, handler=self.on_channel
        )

    async def wait_for(
        self, predicate: Callable[[list[ChannelIn]], Any], timeout: float = 10
    ) -> Any:
        """The first truthy value of `predicate(events)`, re-checked on every new event."""
        try:
            with anyio.fail_after(timeout):
                while True:
                    changed = self._changed
                    found = predicate(self.events)
                    if found:
                        return found
                    await changed.wait()
        except TimeoutError:
            raise AssertionError(
                f"no matching channel event within {timeout}s; got: {self.dump()}"
            ) from None

    def dump(self) -> str:
        return "\n".join(f"  {e.content!r} {e.meta}" for e in self.events) or "(none)"

    def named_run_ids(self) -> set[str]:
        ids: set[str] = set()
        for e in self.events:
            if "run_id" in e.meta:
                ids.add(e.meta["run_id"])
            if e.meta.get("run_ids"):
                ids.update(e.meta["run_ids"].split(","))
        return ids

    def statuses(self, run_id: str) -> list[str]:
        """Every status announced for `run_id`, in order, single or coalesced events."""
        out: list[str] = []
        for e in self.events:
            if e.meta.get("run_id") == run_id:
                out.append(e.meta.get("status", "?"))
            elif run_id in (e.meta.get("run_ids") or "").split(","):
                out.extend(re.findall(rf"{re.escape(run_id)} ({STATUSES}):", str(e.content)))
        return out

    def ended(self, run_id: str) -> str | None:
        """The status `run_id` ended with, once an event said so."""
        return next((s for s in reversed(self.statuses(run_id)) if s in ENDED), None)

    def event_of(self, run_id: str, status: str) -> ChannelIn | None:
        return next(
            (
                e
                for e in self.events
                if e.meta.get("run_id") == run_id and e.meta.get("status") == status
            ),
            None,
        )

    def mentions(self, text: str) -> bool:
        return any(text in str(e.content) for e in self.events)


async def wait_ended(inbox: Inbox, run_id: str, timeout: float = 10) -> str:
    status: str = await inbox.wait_for(lambda _: inbox.ended(run_id), timeout)
    return status


async def wait_mention(inbox: Inbox, text: str, timeout: float = 10) -> None:
    await inbox.wait_for(lambda _: inbox.mentions(text), timeout)


class ChannelExt(ClientExtension):
    identifier = "com.example/fleetbus-tests"

    def __init__(self, inbox: Inbox) -> None:
        self.inbox = inbox

    def notifications(self) -> list[NotificationBinding[Any]]:
        return [self.inbox.binding()]


def check_event_shape(event: ChannelIn) -> None:
    assert isinstance(event.content, str) and event.content, event
    assert "\n" not in event.content, event
    for key, value in event.meta.items():
        assert META_KEY.match(key), f"meta key {key!r} would be dropped by Claude Code"
        assert isinstance(value, str), f"meta {key}={value!r} is not a string"


# -- helpers ----------------------------------------------------------------------------------
def text_of(result: types.CallToolResult) -> str:
    assert result.content, result
    first = result.content[0]
    assert isinstance(first, types.TextContent), first
    return first.text


def structured(result: types.CallToolResult) -> dict[str, Any]:
    assert not result.is_error, text_of(result)
    assert result.structured_content is not None, result
    return dict(result.structured_content)


def dispatch_args(agent: str, workspace: str, prompt: str = "do it") -> dict[str, Any]:
    return {"agent": agent, "prompt": prompt, "workspace": workspace}


async def cli_async(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[bytes]:
    """`fleetbus ARGS` without blocking the event loop (an embedded hub may run in it)."""
    with anyio.fail_after(60):
        return await anyio.run_process(cli_command(*args), env=env, check=False)


def cli_json(proc: subprocess.CompletedProcess[bytes]) -> Any:
    assert proc.returncode == 0, proc.stderr.decode()
    return json.loads(proc.stdout)


@pytest.fixture
def config_env(home: Path, env: dict[str, str]) -> Iterator[dict[str, str]]:
    """The test environment with the agents above ($FLEETBUS_CONFIG); the `cli` fixture
    shares the dict. Afterwards, any agent process a failed test left running is killed."""
    config = home.parent / "fleetbus.yaml"
    config.write_text(CONFIG)
    env["FLEETBUS_CONFIG"] = str(config)
    yield env
    reap_runs(home)


@asynccontextmanager
async def in_process(
    home: Path,
    env: dict[str, str],
    inbox: Inbox,
    *,
    embedded: bool = True,
    coalesce_window: float | None = None,
) -> AsyncIterator[tuple[Client, FleetMCP]]:
    """FleetMCP on a real hub (in this process when `embedded`, else the home's hub over
    its socket), with the SDK's in-memory client attached as one session."""
    async with fleet(Home(home), env, embedded=embedded) as app:
        if coalesce_window is not None:
            app.coalesce_window = coalesce_window
        async with Client(app.server, mode="legacy", extensions=[ChannelExt(inbox)]) as client:
            with anyio.fail_after(5):  # `initialized` is handled in a task of its own
                while not app.sessions:
                    await anyio.sleep(0)
            yield client, app


@asynccontextmanager
async def stdio_session(
    home: Path, env: dict[str, str], inbox: Inbox
) -> AsyncIterator[tuple[ClientSession, types.InitializeResult]]:
    """`fleetbus serve` (stdio) as a real subprocess, as an assistant starts it."""
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "fleetbus.server", "serve"], env=env
    )
    with open(home.parent / "serve.stderr", "w") as errlog:
        async with (
            stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(read, write, notification_bindings=[inbox.binding()]) as session,
        ):
            with anyio.fail_after(30):
                init = await session.initialize()
            yield session, init


def serve_processes() -> list[psutil.Process]:
    found = []
    for p in psutil.Process().children():
        try:  # a child that just ended (a zombie, or gone) is not a server
            if "fleetbus.server" in p.cmdline() and "serve" in p.cmdline():
                found.append(p)
        except psutil.Error:
            continue
    return found


# -- the acceptance, over stdio -------------------------------------------------------
async def test_acceptance_over_stdio(home: Path, config_env: dict[str, str]) -> None:
    inbox = Inbox()
    with anyio.fail_after(60):
        async with stdio_session(home, config_env, inbox) as (session, init):
            caps = init.capabilities
            assert caps.experimental == {"claude/channel": {}}
            assert caps.tools is not None and caps.tools.list_changed is True
            instructions = init.instructions or ""
            assert "channel" in instructions, instructions
            assert "blocked" in instructions and "followup" in instructions, instructions

            tools = {t.name: t for t in (await session.list_tools()).tools}
            assert set(tools) >= TOOLS, sorted(tools)
            for tool in tools.values():
                assert tool.input_schema.get("type") == "object", (tool.name, tool.input_schema)
            required = set(tools["runner_dispatch"].input_schema.get("required", []))
            assert {"agent", "prompt", "workspace"} <= required, required

            workspace = "acme/app/fix-login"
            result = await session.call_tool(
                "runner_dispatch", dispatch_args("sleepy", workspace, "fix the login")
            )
            run_id = structured(result)["run_id"]
            assert isinstance(run_id, str) and run_id
            first = await inbox.wait_for(
                lambda evs: next((e for e in evs if e.meta.get("run_id") == run_id), None), 10
            )
            check_event_shape(first)

            missing = await session.call_tool(
                "runner_dispatch", {"agent": "sleepy", "workspace": workspace}
            )
            assert missing.is_error, missing
            assert "prompt" in text_of(missing), text_of(missing)
            assert "Traceback" not in text_of(missing)

            finished = await inbox.wait_for(lambda _: inbox.event_of(run_id, "completed"), 10)
            assert finished.content == f"sleepy finished {workspace}: completed in 1s, exit 0"
            assert finished.meta["workspace"] == workspace
            assert finished.meta["agent"] == "sleepy"
            for event in inbox.events:
                check_event_shape(event)


# -- tool listing -----------------------------------------------------------------------------
async def test_tool_annotations(home: Path, config_env: dict[str, str]) -> None:
    async with in_process(home, config_env, Inbox()) as (client, _):
        tools = {t.name: t for t in (await client.list_tools()).tools}
    assert set(tools) >= TOOLS, sorted(tools)
    notes = {name: tools[name].annotations for name in TOOLS}
    assert all(n is not None for n in notes.values()), notes
    status, kill, dispatch = notes["runner_status"], notes["runner_kill"], notes["runner_dispatch"]
    assert status is not None and status.read_only_hint is True
    assert kill is not None and kill.destructive_hint is True
    assert dispatch is not None and dispatch.read_only_hint is False


async def test_output_schemas_validate_structured_content(
    home: Path, config_env: dict[str, str]
) -> None:
    """The SDK client validates structuredContent against the listed outputSchema (a call
    that returns proves it); checked again here with jsonschema."""
    inbox = Inbox()
    with anyio.fail_after(30):
        async with in_process(home, config_env, inbox) as (client, _):
            tools = {t.name: t for t in (await client.list_tools()).tools}
            calls = {
                "runner_dispatch": dispatch_args("quick", "acme/app/schema"),
                "runner_status": {"limit": 5},
            }
            for name, args in calls.items():
                schema = tools[name].output_schema
                assert schema is not None and schema.get("type") == "object", (name, schema)
                content = structured(await client.call_tool(name, args))
                jsonschema.validate(content, schema)
            run_id = structured(await client.call_tool("runner_status", {"limit": 1}))["runs"][0][
                "run_id"
            ]
            await wait_ended(inbox, run_id)
            after = structured(await client.call_tool("runner_status", {"run_id": run_id}))
            jsonschema.validate(after, tools["runner_status"].output_schema or {})
            assert after["runs"][0]["status"] == "completed"


# -- bad arguments ----------------------------------------------------------------------------
def enum_values(prop: dict[str, Any]) -> list[Any] | None:
    for option in [prop, *prop.get("anyOf", [])]:
        if "enum" in option:
            return list(option["enum"])
    return None


VALID = {
    "runner_dispatch": dispatch_args("quick", "acme/app/valid"),
    "fleetbus_watch": {"run_ids": ["r-none"], "timeout_s": 1},
}


async def test_bad_arguments_to_every_tool_are_one_line_errors(
    home: Path, config_env: dict[str, str]
) -> None:
    """Unknown field, wrong type and bad enum value, for every tool and field: an isError
    result with one clear line naming the field, never a JSON-RPC error or a traceback."""
    problems: list[str] = []
    checked: list[tuple[str, str]] = []
    with anyio.fail_after(60):
        async with in_process(home, config_env, Inbox()) as (client, _):
            tools = (await client.list_tools()).tools
            assert {t.name for t in tools} >= TOOLS
            for tool in tools:
                base = dict(VALID.get(tool.name, {}))
                cases: list[tuple[str, str, dict[str, Any]]] = [
                    ("unknown field", "bogus_field", {**base, "bogus_field": 1})
                ]
                for field, prop in (tool.input_schema.get("properties") or {}).items():
                    # an object is the wrong type for every field these tools have
                    cases.append(("wrong type", field, {**base, field: {"oops": 1}}))
                    if enum_values(prop):
                        cases.append(("bad enum", field, {**base, field: "not-a-choice"}))
                for what, field, args in cases:
                    checked.append((tool.name, what))
                    try:
                        result = await client.call_tool(tool.name, args)
                    except MCPError as e:
                        problems.append(f"{tool.name} {what}: JSON-RPC error {e}")
                        continue
                    text = text_of(result) if result.content else ""
                    if not result.is_error:
                        problems.append(f"{tool.name} {what} {args}: not an error: {text!r}")
                    elif field not in text or "Traceback" in text or "\n" in text.strip():
                        problems.append(f"{tool.name} {what}: unclear message {text!r}")
                    elif len(text) > 600:
                        problems.append(f"{tool.name} {what}: message too long ({len(text)})")
    assert not problems, "\n".join(problems)
    kinds = {what for _, what in checked}
    assert kinds == {"unknown field", "wrong type", "bad enum"}, kinds


async def test_unknown_tool_is_an_error_listing_the_tools(
    home: Path, config_env: dict[str, str]
) -> None:
    async with in_process(home, config_env, Inbox()) as (client, _):
        result = await client.call_tool("runner_dispatchh", {})
    assert result.is_error, result
    text = text_of(result)
    assert "runner_dispatchh" in text and "\n" not in text, text
    for name in TOOLS:
        assert name in text, text


async def test_watch_bad_arguments(home: Path, config_env: dict[str, str]) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"run_ids": ["r1"], "timeout_s": 500}, "timeout_s"),
        ({"timeout_s": 5}, "run_ids"),
        ({"task_ids": ["t1"], "timeout_s": 5}, "task_ids"),
        ({"run_ids": ["r-no-such-run"], "timeout_s": 5}, "r-no-such-run"),
    ]
    with anyio.fail_after(30):
        async with in_process(home, config_env, Inbox()) as (client, _):
            for args, named in cases:
                result = await client.call_tool("fleetbus_watch", args)
                text = text_of(result)
                assert result.is_error, (args, text)
                assert named in text and "\n" not in text and "Traceback" not in text, text


# -- fleetbus_watch ---------------------------------------------------------------------------
async def test_watch_returns_as_soon_as_a_run_ends(home: Path, config_env: dict[str, str]) -> None:
    with anyio.fail_after(30):
        async with in_process(home, config_env, Inbox()) as (client, _):
            run_id = structured(
                await client.call_tool("runner_dispatch", dispatch_args("sleepy", "acme/app/w1"))
            )["run_id"]
            start = anyio.current_time()
            result = await client.call_tool(
                "fleetbus_watch", {"run_ids": [run_id], "timeout_s": 30}
            )
            waited = anyio.current_time() - start
    watch = structured(result)
    assert watch["timed_out"] is False, watch
    assert [(r["run_id"], r["status"], r["exit_code"]) for r in watch["ended"]] == [
        (run_id, "completed", 0)
    ], watch
    assert watch["pending"] == []
    assert waited < 10, f"fleetbus_watch returned after {waited:.1f}s for a 1 s run"
    assert run_id in text_of(result) and "completed" in text_of(result)


async def test_watch_returns_at_once_for_an_ended_run(
    home: Path, config_env: dict[str, str]
) -> None:
    inbox = Inbox()
    with anyio.fail_after(30):
        async with in_process(home, config_env, inbox) as (client, _):
            run_id = structured(
                await client.call_tool("runner_dispatch", dispatch_args("quick", "acme/app/w2"))
            )["run_id"]
            await wait_ended(inbox, run_id)
            with anyio.fail_after(3):
                result = await client.call_tool(
                    "fleetbus_watch", {"run_ids": [run_id], "timeout_s": 30}
                )
    watch = structured(result)
    assert watch["timed_out"] is False, watch
    assert [(r["run_id"], r["status"]) for r in watch["ended"]] == [(run_id, "completed")]


async def kill_run(client: Client, inbox: Inbox, run_id: str) -> None:
    result = structured(await client.call_tool("runner_kill", {"run_id": run_id}))
    assert result["killed"] == 1, result
    await wait_ended(inbox, run_id)


async def test_watch_times_out_on_a_long_run(home: Path, config_env: dict[str, str]) -> None:
    inbox = Inbox()
    with anyio.fail_after(30):
        async with in_process(home, config_env, inbox) as (client, _):
            run_id = structured(
                await client.call_tool("runner_dispatch", dispatch_args("long", "acme/app/w3"))
            )["run_id"]
            try:
                start = anyio.current_time()
                result = await client.call_tool(
                    "fleetbus_watch", {"run_ids": [run_id], "timeout_s": 0.5}
                )
                waited = anyio.current_time() - start
            finally:
                await kill_run(client, inbox, run_id)
    watch = structured(result)
    assert watch["timed_out"] is True, watch
    assert watch["ended"] == []
    assert [(r["run_id"], r["status"]) for r in watch["pending"]] == [(run_id, "running")]
    assert 0.4 <= waited < 5, waited


async def test_watch_reports_progress_while_it_waits(
    home: Path, config_env: dict[str, str]
) -> None:
    """The server reports progress every 5 s: a 6 s watch gets at least one report."""
    inbox = Inbox()
    reports: list[tuple[float, float | None, str | None]] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        reports.append((progress, total, message))

    with anyio.fail_after(30):
        async with in_process(home, config_env, inbox) as (client, _):
            run_id = structured(
                await client.call_tool("runner_dispatch", dispatch_args("long", "acme/app/w4"))
            )["run_id"]
            try:
                result = await client.call_tool(
                    "fleetbus_watch",
                    {"run_ids": [run_id], "timeout_s": 6},
                    progress_callback=on_progress,
                )
            finally:
                await kill_run(client, inbox, run_id)
    assert structured(result)["timed_out"] is True
    assert reports, "no progress notification during a 6 s watch"
    value, total, message = reports[0]
    assert 4 <= value <= 6 and total == 6, reports
    assert message, reports


# -- resources --------------------------------------------------------------------------------
async def test_resources_status_and_run_log(home: Path, config_env: dict[str, str]) -> None:
    inbox = Inbox()
    with anyio.fail_after(30):
        async with in_process(home, config_env, inbox) as (client, _):
            listed = {str(r.uri) for r in (await client.list_resources()).resources}
            assert "fleetbus://status" in listed, listed
            templates = {
                t.uri_template for t in (await client.list_resource_templates()).resource_templates
            }
            assert "fleetbus://runs/{run_id}/log" in templates, templates

            run_id = structured(
                await client.call_tool("runner_dispatch", dispatch_args("sleepy", "acme/app/r1"))
            )["run_id"]
            running = json.loads(await read_text(client, "fleetbus://status"))
            assert running["running"] == 1 and running["queued"] == 0, running

            await wait_ended(inbox, run_id)
            status = json.loads(await read_text(client, "fleetbus://status"))
            assert status["running"] == 0 and status["queued"] == 0, status
            assert status["completed"] == 1, status
            log = await read_text(client, f"fleetbus://runs/{run_id}/log")
            assert "done" in log, log

            with pytest.raises(MCPError) as info:
                await client.read_resource("fleetbus://runs/r-no-such-run/log")
            assert "r-no-such-run" in str(info.value)


async def read_text(client: Client, uri: str) -> str:
    contents = (await client.read_resource(uri)).contents
    assert len(contents) == 1, contents
    item = contents[0]
    assert isinstance(item, types.TextResourceContents), item
    return item.text


# -- sessions ---------------------------------------------------------------------------------
async def test_closing_the_session_does_not_stop_its_run(
    home: Path, config_env: dict[str, str], cli: Cli
) -> None:
    def status_of(run_id: str) -> str:
        proc = cli("call", "runner.status", json.dumps({"run_id": run_id}))
        assert proc.returncode == 0, proc.stderr
        runs = json.loads(proc.stdout)["runs"]
        assert [r["run_id"] for r in runs] == [run_id], runs
        return str(runs[0]["status"])

    inbox = Inbox()
    with anyio.fail_after(60):
        async with stdio_session(home, config_env, inbox) as (session, _):
            servers = serve_processes()
            assert len(servers) == 1, servers
            result = await session.call_tool(
                "runner_dispatch", dispatch_args("slow3", "acme/app/s1")
            )
            run_id = structured(result)["run_id"]
            assert structured(result)["status"] == "running"
        _, alive = psutil.wait_procs(servers, timeout=10)
        assert not alive, f"`fleetbus serve` still runs after its session closed: {alive}"

        status = await anyio.to_thread.run_sync(status_of, run_id)
        assert status == "running", status
        with anyio.fail_after(20):
            while status == "running":  # each CLI call takes a few hundred ms
                status = await anyio.to_thread.run_sync(status_of, run_id)
    assert status == "completed", status


async def test_a_burst_is_coalesced(home: Path, config_env: dict[str, str]) -> None:
    """8 events (4 starts, 4 ends) against a budget of 4 refilled at one per 2 s: unless
    they spread over more than 8 s, some must be coalesced (the window is widened from
    50 ms so that how fast the machine is cannot decide the test)."""
    inbox = Inbox()
    run_ids: list[str] = []
    with anyio.fail_after(30):
        async with in_process(home, config_env, inbox, coalesce_window=2.0) as (client, _):

            async def dispatch(n: int) -> None:
                result = await client.call_tool(
                    "runner_dispatch", dispatch_args("quick", f"acme/burst/t{n}")
                )
                run_ids.append(structured(result)["run_id"])

            async with anyio.create_task_group() as tg:
                for n in range(4):
                    tg.start_soon(dispatch, n)
            await inbox.wait_for(lambda _: all(inbox.ended(r) for r in run_ids))

    events = inbox.events
    assert len(events) < 8, f"{len(events)} events for 4 runs (8 unless coalesced):\n{inbox.dump()}"
    assert inbox.named_run_ids() >= set(run_ids), inbox.dump()
    for e in events:
        check_event_shape(e)
    for r in run_ids:
        assert inbox.ended(r) == "completed", (r, inbox.statuses(r))
    coalesced = [e for e in events if "," in e.meta.get("run_ids", "")]
    assert coalesced, f"no coalesced event naming several runs:\n{inbox.dump()}"
    for e in coalesced:
        named = e.meta["run_ids"].split(",")
        assert set(named) <= set(run_ids), e.meta
        per_run = {r: re.findall(rf"{re.escape(r)} ({STATUSES}):", e.content) for r in named}
        assert all(len(s) == 1 for s in per_run.values()), (
            f"a coalesced event should give one status per run, got {per_run} in {e.content!r}"
        )


@asynccontextmanager
async def two_sessions(
    home: Path, env: dict[str, str], a: Inbox, b: Inbox
) -> AsyncIterator[tuple[Client, Client]]:
    """Two MCP front ends (two sessions) on one hub: A runs it embedded, B reaches it over
    the home's socket, like a second `fleetbus serve`."""
    async with (
        in_process(home, env, a) as (client_a, _),
        in_process(home, env, b, embedded=False) as (client_b, _),
    ):
        yield client_a, client_b


async def test_cli_runs_and_fleet_events_reach_every_session(
    home: Path, config_env: dict[str, str]
) -> None:
    """A run dispatched from the CLI has no MCP session: its events go to every session,
    and so does a fleet-wide event (queue drained)."""
    a, b = Inbox(), Inbox()
    with anyio.fail_after(60):
        async with two_sessions(home, config_env, a, b):
            run_id = cli_json(
                await cli_async(
                    config_env,
                    "call",
                    "runner.dispatch",
                    json.dumps(dispatch_args("quick", "acme/cli/one")),
                )
            )["run_id"]
            for inbox in (a, b):
                await wait_ended(inbox, run_id)
                assert run_id in inbox.named_run_ids()

            cli_json(await cli_async(config_env, "call", "runner.stop"))
            queued = cli_json(
                await cli_async(
                    config_env,
                    "call",
                    "runner.dispatch",
                    json.dumps(dispatch_args("quick", "acme/cli/two")),
                )
            )
            assert queued["status"] == "queued", queued
            cli_json(await cli_async(config_env, "call", "runner.start"))
            for inbox in (a, b):
                await wait_mention(inbox, "queue drained")
                await wait_ended(inbox, queued["run_id"])


async def test_a_fleet_event_caused_by_one_session_reaches_every_session(
    home: Path, config_env: dict[str, str]
) -> None:
    """Session A unfreezes dispatch; the queue drains. "queue drained" is fleet-wide: B
    gets it too, not only the session whose call caused the drain."""
    a, b = Inbox(), Inbox()
    with anyio.fail_after(60):
        async with two_sessions(home, config_env, a, b) as (client_a, _):
            structured(await client_a.call_tool("runner_stop", {}))
            queued = cli_json(
                await cli_async(
                    config_env,
                    "call",
                    "runner.dispatch",
                    json.dumps(dispatch_args("quick", "acme/cli/three")),
                )
            )
            assert queued["status"] == "queued", queued
            structured(await client_a.call_tool("runner_start", {}))
            await wait_mention(a, "queue drained")
            await wait_ended(b, queued["run_id"])
            await wait_mention(b, "queue drained", timeout=2)


async def test_a_new_action_on_the_hub_becomes_a_tool_with_list_changed(
    home: Path, config_env: dict[str, str]
) -> None:
    """When the hub's set of actions changes, sessions get notifications/tools/list_changed
    and the next tools/list has the new tool."""
    from fleetbus.bus.actions import make_spec
    from fleetbus.bus.client import LocalClient

    changed = anyio.Event()

    async def on_message(message: Any) -> None:
        root = getattr(message, "root", message)
        if getattr(root, "method", "") == "notifications/tools/list_changed":
            changed.set()

    async with (
        fleet(Home(home), config_env, embedded=True) as app,
        Client(app.server, mode="legacy", message_handler=on_message) as client,
    ):
        names = {t.name for t in (await client.list_tools()).tools}
        assert "extra_hello" not in names and "runner_dispatch" in names
        local = await app.get_client()
        assert isinstance(local, LocalClient)
        local.hub.bus.add_action(make_spec("extra.hello", _hello, plugin="test", exposed=True))
        with anyio.fail_after(10):
            await changed.wait()
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert "extra_hello" in tools and tools["extra_hello"].description == "Say hello."
        result = await client.call_tool("extra_hello", {"name": "ada"})
        assert not result.is_error and result.structured_content == {"name": "ada"}


class Hello(BaseModel):
    name: str


async def _hello(req: Hello) -> Hello:
    """Say hello."""
    return req
