"""Fuzzing the two doors callers knock on: the hub's JSON-RPC socket and every exposed MCP
tool through `fleetbus serve`, with hypothesis. The tools are driven by the SDK's own client
(arguments from each tool's JSON Schema, and junk objects); what that client cannot send
(arguments that are not an object, lone surrogates) goes on the wire.

Properties: every request gets an answer; no answer is an internal error or carries a
traceback; the hub and the server still answer afterwards; no subscription outlives its
connection and the hub's task count (`hub.status` "tasks") ends where it started; the hub's
log has no traceback. The runner is frozen (FLEETBUS_FROZEN=1) and
`runner.start` / `runner_start` are left out, so no fuzzed dispatch ever starts an agent.

CI runs a short, seeded variant (`derandomize`); FLEETBUS_FUZZ_EXAMPLES=2000 runs long.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.from_thread import start_blocking_portal
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.shared.exceptions import MCPError

from fleetbus.bus.paths import Home
from fleetbus.testing.hub import cli_command, hub_process
from fleetbus.testing.mcp_wire import WireClient

pytestmark = pytest.mark.fuzz

EXAMPLES = int(os.environ.get("FLEETBUS_FUZZ_EXAMPLES", "200"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=EXAMPLES <= 200,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
METHODS = [
    "hello",
    "actions",
    "plugins",
    "status",
    "perform",
    "job",
    "query",
    "subscribe",
    "unsubscribe",
]
PARAM_NAMES = [
    "action", "input", "context", "timeout", "background", "job_id", "wait", "type", "data",
    "all", "topics", "since", "buffer", "subscription", "exposed_only",
]  # fmt: skip
ACTIONS = [
    "hub.ping",
    "hub.status",
    "runner.dispatch",
    "runner.status",
    "runner.kill",
    "runner.stop",
]
# repositories agentic_dispatch may be fuzzed with: none a worktree could be added to
SAFE_REPOS = st.sampled_from(
    ["", "-x", "zz-no-such-repo", "/nonexistent/repo", "http://example.invalid/r.git",
     "ext::sh -c x", "git://example.invalid/r", "\x00", "../..", "file:///nonexistent"]
)  # fmt: skip
BAD_TEXT = st.sampled_from(["\ud800", "x" * 5000, "", "null", "../..", "\x00", "r1"])
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
    | BAD_TEXT,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


def param_value(name: str) -> st.SearchStrategy[Any]:
    if name == "action":
        return st.sampled_from(ACTIONS) | json_values
    return json_values


@st.composite
def requests(draw: st.DrawFn) -> bytes:
    """A request line: mostly well-formed JSON-RPC with junk params, sometimes junk."""
    kind = draw(st.sampled_from(["rpc", "rpc", "rpc", "nested", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200)).replace(b"\n", b" ") + b"\n"
    if kind == "nested":
        depth = draw(st.integers(1000, 6000))
        return (
            b'{"jsonrpc":"2.0","id":1,"method":"perform","params":{"input":'
            + b"[" * depth
            + b"]" * depth
            + b"}}\n"
        )
    names = draw(st.lists(st.sampled_from(PARAM_NAMES), max_size=4, unique=True))
    params = {n: draw(param_value(n)) for n in names}
    req = {
        "jsonrpc": "2.0",
        "id": draw(st.integers(0, 10**6)),
        "method": draw(st.sampled_from(METHODS) | st.text(max_size=10)),
        "params": params,
    }
    return json.dumps(req).encode() + b"\n"


def from_schema(schema: Any) -> st.SearchStrategy[Any]:
    """Values shaped by a tool's JSON Schema (types, enums, properties), often invalid
    at the edges: enough to get past the first check into the tool's own."""
    if not isinstance(schema, dict):
        return json_values
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    if "anyOf" in schema:
        return st.one_of([from_schema(s) for s in schema["anyOf"]])
    kind = schema.get("type")
    if isinstance(kind, list):
        return st.one_of([from_schema({**schema, "type": k}) for k in kind])
    if kind == "object":
        props = schema.get("properties", {})
        return st.fixed_dictionaries(
            {}, optional={name: from_schema(sub) for name, sub in props.items()}
        )
    simple: dict[str, st.SearchStrategy[Any]] = {
        "string": st.text(max_size=30) | BAD_TEXT,
        "integer": st.integers(-(10**12), 10**12),
        "number": st.floats(allow_nan=False) | st.integers(-5, 5),
        "boolean": st.booleans(),
        "null": st.none(),
        "array": st.lists(st.text(max_size=20) | BAD_TEXT, max_size=5),
    }
    return simple.get(str(kind), json_values)


def fuzz_env(env: dict[str, str]) -> dict[str, str]:
    return {**env, "FLEETBUS_FROZEN": "1"}


def check_answer(line: bytes) -> dict[str, Any]:
    assert line, "the hub closed the connection"
    reply = json.loads(line)
    text = json.dumps(reply)
    assert "Traceback" not in text, reply
    if "error" in reply:
        assert reply["error"]["code"] != -32603, reply
        assert "internal error" not in reply["error"]["message"], reply
    return dict(reply)


def test_the_hub_socket_answers_junk_without_internal_errors(
    home: Path, env: dict[str, str]
) -> None:
    with hub_process(home, fuzz_env(env)):
        path = os.fspath(Home(home).socket)

        @FUZZ
        @given(line=requests())
        def one(line: bytes) -> None:
            with socket.socket(socket.AF_UNIX) as sock:
                sock.settimeout(30)
                sock.connect(path)
                sock.sendall(line)
                if line.strip() and b'"method":"subscribe"' not in line:
                    check_answer(sock.makefile("rb").readline())
                sock.sendall(b'{"jsonrpc":"2.0","id":"ping","method":"hello"}\n')
                reader = sock.makefile("rb")
                while True:  # the hub still answers on this connection
                    reply = check_answer(reader.readline())
                    if reply.get("id") == "ping":
                        assert "result" in reply, reply
                        break

        tasks_before = hub_tasks(fuzz_env(env))
        one()
        assert hub_tasks(fuzz_env(env)) <= tasks_before, "a fuzzed request left a task behind"
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(30)
            sock.connect(path)
            sock.sendall(b'{"jsonrpc":"2.0","id":1,"method":"status"}\n')
            status = json.loads(sock.makefile("rb").readline())["result"]
        ipc_subs = [s for s in status["subscribers"] if s["name"].startswith("ipc:")]
        assert ipc_subs == [], ipc_subs
    assert (
        "Traceback" not in (home / "hub.log").read_text() if (home / "hub.log").exists() else True
    )


def hub_tasks(env: dict[str, str]) -> int:
    """The hub's live task count, asked over a fresh connection (which counts the same
    every time it is asked)."""
    done = subprocess.run(
        cli_command("call", "hub.status"), env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return int(json.loads(done.stdout)["tasks"])


def encodable(value: Any) -> bool:
    try:
        json.dumps(value).encode().decode()
        json.dumps(value, ensure_ascii=False).encode()
    except (UnicodeError, ValueError):
        return False
    return True


def check_tool_reply(reply: Any) -> None:
    text = json.dumps(reply, default=str)
    assert "Traceback" not in text and "internal error" not in text, reply


def tool_arguments(tools: dict[str, Any], name: str) -> st.SearchStrategy[dict[str, Any]]:
    """Arguments shaped by the tool's schema, or a junk object."""
    valid = from_schema(tools[name]["inputSchema"])
    if name == "fleetbus_watch":  # never wait out the default in a fuzz step
        valid = valid.map(lambda a: {**a, "timeout_s": 0})
    if name == "agentic_dispatch":  # never a worktree of a repository outside the test
        valid = st.builds(lambda a, r: {**a, "repo": r}, valid, SAFE_REPOS)
        return valid
    return valid | st.dictionaries(st.text(max_size=12), json_values, max_size=4)


def test_every_tool_answers_junk_through_the_sdk_client(home: Path, env: dict[str, str]) -> None:
    """The SDK's own client over stdio, as an assistant runs it: every exposed tool with
    arguments drawn from its JSON Schema and junk objects."""
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "fleetbus.server", "serve"], env=fuzz_env(env)
    )
    with (
        open(home.parent / "serve.stderr", "w") as errlog,
        start_blocking_portal() as portal,
        ExitStack() as stack,
    ):
        read, write = stack.enter_context(
            portal.wrap_async_context_manager(stdio_client(params, errlog=errlog))
        )
        session = stack.enter_context(portal.wrap_async_context_manager(ClientSession(read, write)))
        portal.call(session.initialize)
        listed = portal.call(session.list_tools)
        tools = {
            t.name: t.model_dump(by_alias=True) for t in listed.tools if t.name != "runner_start"
        }

        async def call(name: str, args: dict[str, Any]) -> Any:
            with anyio.fail_after(60):
                try:
                    return (await session.call_tool(name, args)).model_dump(by_alias=True)
                except MCPError as e:  # malformed params never reach the tool
                    assert e.error.code == -32602, e.error
                    return e.error.model_dump(by_alias=True)

        portal.call(call, "runner_status", {"limit": 1})  # the hub's side of the session opens
        tasks_before = hub_tasks(fuzz_env(env))

        @FUZZ
        @given(data=st.data())
        def one(data: st.DataObject) -> None:
            name = data.draw(st.sampled_from(sorted(tools)))
            args = data.draw(tool_arguments(tools, name))
            assume(
                encodable(args)
            )  # the SDK client cannot send lone surrogates; the wire test does
            check_tool_reply(portal.call(call, name, args))

        one()
        status = portal.call(call, "runner_status", {"limit": 1})
        assert status["isError"] is False, status
        assert hub_tasks(fuzz_env(env)) <= tasks_before, "a fuzzed call left a task behind"
    assert "Traceback" not in (home / "hub.log").read_text()


def test_tools_answer_malformed_arguments_on_the_wire(home: Path, env: dict[str, str]) -> None:
    """What the SDK client cannot send: arguments that are not an object at all."""
    errlog = open(home.parent / "serve.stderr", "wb")  # noqa: SIM115 - closed below
    with WireClient(
        [sys.executable, "-m", "fleetbus.server", "serve"], fuzz_env(env), stderr=errlog
    ) as client:
        client.open_like_claude_code()
        names = [t["name"] for t in client.call("tools/list")["result"]["tools"]]

        @settings(FUZZ, max_examples=max(20, EXAMPLES // 4))
        @given(name=st.sampled_from(names) | st.text(max_size=12), args=json_values)
        def one(name: str, args: Any) -> None:
            if isinstance(args, dict) and name in ("runner_start", "agentic_dispatch"):
                return
            reply = client.call("tools/call", {"name": name, "arguments": args}, timeout=60)
            check_tool_reply(reply)
            if "error" in reply:
                assert reply["error"]["code"] == -32602, reply

        one()
        assert "result" in client.call("ping")
    errlog.close()
    assert "Traceback" not in (home / "hub.log").read_text()
