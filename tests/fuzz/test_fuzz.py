"""Fuzzing the two doors callers knock on: the hub's JSON-RPC socket and every exposed MCP
tool through `fleetbus serve`, with hypothesis.

Properties: every request gets an answer; no answer is an internal error or carries a
traceback; the hub and the server still answer afterwards; no subscription outlives its
connection; the hub's log has no traceback. The runner is frozen (FLEETBUS_FROZEN=1) and
`runner.start` / `runner_start` are left out, so no fuzzed dispatch ever starts an agent.

CI runs a short, seeded variant (`derandomize`); FLEETBUS_FUZZ_EXAMPLES=2000 runs long.
"""

from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleetbus.bus.paths import Home
from fleetbus.testing.hub import hub_process
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

        one()
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


def test_every_tool_answers_junk_without_internal_errors(home: Path, env: dict[str, str]) -> None:
    errlog = open(home.parent / "serve.stderr", "wb")  # noqa: SIM115 - closed below
    with WireClient(
        [sys.executable, "-m", "fleetbus.server", "serve"], fuzz_env(env), stderr=errlog
    ) as client:
        client.open_like_claude_code()
        tools = {t["name"]: t for t in client.call("tools/list")["result"]["tools"]}
        tools.pop("runner_start")

        def arguments(name: str) -> st.SearchStrategy[Any]:
            schema = tools[name]["inputSchema"]
            valid = from_schema(schema)
            if name == "fleetbus_watch":
                valid = valid.map(lambda a: {**a, "timeout_s": 0} if isinstance(a, dict) else a)
            return (
                valid | st.dictionaries(st.text(max_size=12), json_values, max_size=4) | json_values
            )

        @FUZZ
        @given(data=st.data())
        def one(data: st.DataObject) -> None:
            name = data.draw(st.sampled_from(sorted(tools)))
            args = data.draw(arguments(name))
            reply = client.call("tools/call", {"name": name, "arguments": args}, timeout=60)
            text = json.dumps(reply)
            assert "Traceback" not in text and "internal error" not in text, reply
            if "error" in reply:  # malformed params never reach the tool
                assert reply["error"]["code"] == -32602, reply

        one()
        assert "result" in client.call("ping")
        status = client.call_tool("runner_status", {"limit": 1})
        assert status["result"]["isError"] is False, status
    errlog.close()
    assert "Traceback" not in (home / "hub.log").read_text()
