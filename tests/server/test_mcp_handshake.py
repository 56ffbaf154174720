"""`fleetbus serve` over stdio, opened on the wire exactly as real clients open it.

Claude Code 2.1.328 probes with `server/discover` first and delivers channel events only
on a connection that then negotiated 2025-11-25 with `claude/channel` declared; the relay
answers the handshake itself and serves the rest from an MCP session in the hub. These
tests drive `fleetbus serve` as a real subprocess with `fleetbus.testing.mcp_wire`.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import anyio
import mcp.types as types
import pytest
from mcp.types.version import HANDSHAKE_PROTOCOL_VERSIONS

from fleetbus.bus.lock import read_pid
from fleetbus.bus.paths import Home
from fleetbus.server import handshake
from fleetbus.server.mcp_server import FleetMCP, Session
from fleetbus.server.relay import TOOLS_CACHE
from fleetbus.testing.hub import stop_hub
from fleetbus.testing.mcp_wire import CHANNEL_METHOD, HANDSHAKE, WireClient, serve
from fleetbus.testing.processes import wait_for


def error_of(msg: dict[str, Any]) -> tuple[int, str]:
    assert "error" in msg, msg
    return msg["error"]["code"], msg["error"]["message"]


def channel_events(client: WireClient) -> list[dict[str, Any]]:
    return [m["params"] for m in client.messages if m.get("method") == CHANNEL_METHOD]


def run_status(client: WireClient, run_id: str) -> str | None:
    """The run's latest status in the channel events seen so far (single or coalesced)."""
    status = None
    for params in channel_events(client):
        meta = params["meta"]
        if meta.get("run_id") == run_id:
            status = meta.get("status")
        for pair in filter(None, meta.get("statuses", "").split(",")):
            rid, _, st = pair.partition(":")
            if rid == run_id:
                status = st
    return status


def dispatch(client: WireClient, agent: str, workspace: str) -> str:
    reply = client.call_tool(
        "runner_dispatch", {"agent": agent, "prompt": "go", "workspace": workspace}
    )
    assert "result" in reply and not reply["result"].get("isError"), reply
    return str(reply["result"]["structuredContent"]["run_id"])


# -- the acceptance: Claude Code's opening gets channels ------------------------------------
def test_claude_codes_opening_ends_on_the_handshake_with_channels(
    home: Path, serve_env: dict[str, str]
) -> None:
    with serve(serve_env, home.parent) as client:
        init = client.open_like_claude_code()
        probe = client.response("server-discover-probe-1")
        assert error_of(probe)[0] == -32601, probe
        assert "initialize" in error_of(probe)[1]
        result = init["result"]
        assert result["protocolVersion"] == HANDSHAKE
        assert result["capabilities"]["experimental"] == {"claude/channel": {}}
        assert result["capabilities"]["tools"]["listChanged"] is True
        assert "Do not poll" in result["instructions"]

        run_id = dispatch(client, "quick", "acme/wire/one")
        event = client.wait_for(
            lambda m: (
                m.get("method") == CHANNEL_METHOD
                and m["params"]["meta"].get("run_id") == run_id
                and m["params"]["meta"].get("status") == "completed"
            ),
            timeout=15,
        )
        assert event["params"]["meta"]["workspace"] == "acme/wire/one"
        assert event["params"]["content"].startswith("quick finished acme/wire/one: completed")


def test_a_blocked_agent_answered_with_a_followup_completes_having_seen_both(
    home: Path, serve_env: dict[str, str]
) -> None:
    """The loop the instructions teach: blocked event quoting the question, a followup
    dispatch with the answer, the answer run completed with the question and answer."""
    with serve(serve_env, home.parent) as client:
        client.open_like_claude_code()
        ask = {"agent": "fake", "workspace": "acme/ask/db"}
        reply = client.call_tool(
            "runner_dispatch", {**ask, "prompt": "echo read the schema\nquestion Which database?"}
        )
        asker = reply["result"]["structuredContent"]["run_id"]
        blocked = client.wait_for(
            lambda m: (
                m.get("method") == CHANNEL_METHOD
                and m["params"]["meta"].get("run_id") == asker
                and m["params"]["meta"].get("status") == "blocked"
            ),
            15,
        )
        assert blocked["params"]["content"] == "fake is blocked in acme/ask/db: Which database?"

        reply = client.call_tool(
            "runner_dispatch",
            {**ask, "prompt": "received\nUse SQLite.", "session_mode": "followup"},
        )
        answer = reply["result"]["structuredContent"]["run_id"]
        client.wait_for(lambda _: run_status(client, answer) == "completed", 15)
        assert run_status(client, asker) == "blocked"
        log = client.call("resources/read", {"uri": f"fleetbus://runs/{answer}/log"})
        text = log["result"]["contents"][0]["text"]
        assert f"This continues run {asker}" in text
        assert "Which database?" in text and "Use SQLite." in text


def test_clients_without_channels_are_told_to_watch(home: Path, serve_env: dict[str, str]) -> None:
    with serve(serve_env, home.parent) as client:
        init = client.open("codex-mcp-client")
        text = init["result"]["instructions"]
        assert "fleetbus_watch" in text and "does not show" in text, text
        assert "Do not poll" not in text


# -- bad handshakes: a clear error, the session and the hub unharmed --------------------------
def test_bad_handshakes_get_clear_errors_and_harm_nothing(
    home: Path, serve_env: dict[str, str]
) -> None:
    with serve(serve_env, home.parent) as client:
        client.notify("notifications/initialized")
        early = client.wait_for(lambda m: m.get("id") is None and "error" in m)
        assert "before initialize" in error_of(early)[1]
        assert (
            error_of(client.call("tools/list"))[1]
            == "tools/list before initialize: send initialize first"
        )
        assert "result" in client.call("ping")

        for bad in ("banana", 20251125, "2023-01-01"):
            code, message = error_of(
                client.call(
                    "initialize",
                    {
                        "protocolVersion": bad,
                        "capabilities": {},
                        "clientInfo": {"name": "t", "version": "1"},
                    },
                )
            )
            assert code == -32602 and "2024-11-05 to 2025-11-25" in message, message

        newer = client.call(
            "initialize",
            {
                "protocolVersion": "2026-07-28",
                "capabilities": {},
                "clientInfo": {"name": "t", "version": "1"},
            },
        )
        assert newer["result"]["protocolVersion"] == HANDSHAKE
        client.notify("notifications/initialized")

        code, message = error_of(client.call("initialize", {"protocolVersion": HANDSHAKE}))
        assert code == -32600 and "already sent" in message, message
        code, message = error_of(client.call("server/discover", {}))
        assert code == -32600 and "after initialize" in message, message
        client.send_line(b"{not json")
        assert (
            "not JSON"
            in error_of(
                client.wait_for(lambda m: m.get("id") is None and "not JSON" in json.dumps(m))
            )[1]
        )

        tools = client.call("tools/list")["result"]["tools"]
        assert "runner_dispatch" in {t["name"] for t in tools}
        status = client.call_tool("runner_status", {"limit": 1})
        assert status["result"]["isError"] is False, status
    assert not any(b"Traceback" in line for line in client.not_json)
    log = (home / "hub.log").read_text()
    assert "Traceback" not in log, log


def test_older_protocol_versions_are_echoed(home: Path, serve_env: dict[str, str]) -> None:
    with serve(serve_env, home.parent) as client:
        init = client.open(protocol="2025-03-26")
        assert init["result"]["protocolVersion"] == "2025-03-26"
        assert "result" in client.call("tools/list")


# -- what the relay answers is what the SDK would -------------------------------------------
async def get_nothing() -> Any:
    raise AssertionError("not called")


def test_the_relays_handshake_matches_the_sdk_server() -> None:
    assert tuple(HANDSHAKE_PROTOCOL_VERSIONS) == handshake.PROTOCOL_VERSIONS
    app = FleetMCP(get_nothing)
    options = app.server.create_initialization_options()
    sdk = options.capabilities.model_dump(by_alias=True, mode="json", exclude_none=True)
    assert sdk.pop("extensions", {}) == {}  # none advertised: the relay leaves the key out
    assert sdk == handshake.CAPABILITIES
    assert isinstance(options.capabilities, types.ServerCapabilities)


# -- starting, restarting ---------------------------------------------------------------------
def test_a_cold_start_answers_tools_from_the_published_list_then_corrects_it(
    home: Path, serve_env: dict[str, str]
) -> None:
    with serve(serve_env, home.parent) as first:
        first.open()
        assert first.call("tools/list")["result"]["tools"]
    cache = home / TOOLS_CACHE
    assert wait_for(cache.exists, 10), "the hub did not publish its tool list"
    assert oct(cache.stat().st_mode & 0o777) == "0o600"
    stop_hub(home)

    published = json.loads(cache.read_text())
    published["tools"] = [t for t in published["tools"] if t["name"] != "runner_poke"]
    cache.write_text(json.dumps(published))
    with serve(serve_env, home.parent, "second") as second:
        second.open()
        names = {t["name"] for t in second.call("tools/list")["result"]["tools"]}
        assert "runner_poke" not in names  # answered from the published list
        second.wait_for(lambda m: m.get("method") == "notifications/tools/list_changed", 30)
        live = {t["name"] for t in second.call("tools/list")["result"]["tools"]}
        assert "runner_poke" in live


def test_the_session_survives_a_hub_restart(home: Path, serve_env: dict[str, str]) -> None:
    with serve(serve_env, home.parent) as client:
        client.open_like_claude_code()
        before = dispatch(client, "quick", "acme/restart/a")
        pid = read_pid(Home(home).lock)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)
        status = client.call_tool("runner_status", {"run_id": before}, timeout=60)
        if "error" in status:  # sent before the relay saw the hub go: it says so, once
            assert "try again" in status["error"]["message"], status
            status = client.call_tool("runner_status", {"run_id": before}, timeout=60)
        assert "result" in status, status
        assert status["result"]["structuredContent"]["runs"][0]["run_id"] == before
        after = dispatch(client, "quick", "acme/restart/b")
        client.wait_for(lambda _: run_status(client, after) == "completed", 15)
        assert read_pid(Home(home).lock) not in (None, pid)


def test_a_hub_without_the_mcp_host_gives_a_clear_error(
    home: Path, serve_env: dict[str, str]
) -> None:
    serve_env["FLEETBUS_DISABLE_PLUGINS"] = "mcp_host"
    with serve(serve_env, home.parent) as client:
        client.open()
        reply = client.call("tools/call", {"name": "runner_status", "arguments": {}}, timeout=40)
        message = error_of(reply)[1]
        assert "does not serve MCP sessions" in message and "mcp_host" in message, message


def test_end_of_input_waits_for_the_answers_owed(home: Path, serve_env: dict[str, str]) -> None:
    """A scripted client that writes its requests and closes its input still gets answers."""
    client = serve(serve_env, home.parent)
    client.open()
    req = client.request("tools/call", {"name": "runner_status", "arguments": {"limit": 1}})
    assert client.close() == 0
    assert "result" in client.response(req, timeout=0)


def test_discover_can_be_answered_by_setting(home: Path, serve_env: dict[str, str]) -> None:
    serve_env[handshake.DISCOVER_SETTING] = "answer"
    with serve(serve_env, home.parent) as client:
        envelope = {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
        }
        probe = client.call("server/discover", {"_meta": envelope})
        assert "2026-07-28" in probe["result"]["supportedVersions"], probe


class Gate:
    """An exclusive flock the `gated` agents wait on (`flock -s`), without polling."""

    def __init__(self, path: str) -> None:
        self.fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self.fd, fcntl.LOCK_EX)

    def open(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


@contextmanager
def gate_closed(path: str) -> Iterator[Gate]:
    gate = Gate(path)
    try:
        yield gate
    finally:
        gate.open()


# -- bursts -----------------------------------------------------------------------------------
@pytest.mark.slow
@pytest.mark.parametrize("runs", [100, 500])
def test_runs_ending_at_once_reach_the_client_with_every_status(
    home: Path, serve_env: dict[str, str], runs: int
) -> None:
    config = Path(serve_env["FLEETBUS_CONFIG"])
    config.write_text(
        config.read_text().replace(
            "    env: [GATE]\n", f"    env: [GATE]\n    concurrency: {runs}\n"
        )
        + f"dispatch:\n  total_concurrency: {runs}\n"
    )
    with gate_closed(serve_env["GATE"]) as gate, serve(serve_env, home.parent) as client:
        client.open_like_claude_code()
        ids = [dispatch(client, "gated", f"acme/burst/t{n}") for n in range(runs)]
        client.wait_for(lambda _: all(run_status(client, r) == "running" for r in ids), 60)
        gate.open()  # every agent ends at once
        client.wait_for(lambda _: all(run_status(client, r) == "completed" for r in ids), 60)
        events = channel_events(client)
        merged = [e for e in events if "statuses" in e["meta"]]
        assert merged, "a burst this size should have been coalesced"
        for e in merged:
            named = e["meta"]["run_ids"].split(",")
            pairs = dict(p.split(":") for p in e["meta"]["statuses"].split(","))
            assert list(pairs) == named, e["meta"]


# -- sessions never wait on each other --------------------------------------------------------
@pytest.mark.anyio
async def test_a_stuck_session_never_holds_up_the_others() -> None:
    app = FleetMCP(get_nothing)
    stuck_out, stuck_in = anyio.create_memory_object_stream[Any](2)
    live_out, live_in = anyio.create_memory_object_stream[Any](1000)
    app.sessions = {"stuck": Session("stuck", stuck_out), "live": Session("live", live_out)}
    with anyio.fail_after(5):  # route never blocks, whoever does not read
        for n in range(100):
            app.route({"data": {"channel": "fleet", "content": f"event {n}", "meta": {}}})
    received = [live_in.receive_nowait().content for _ in range(100)]
    assert received == [f"event {n}" for n in range(100)]
    assert app.sessions["stuck"].dropped == 98
    for stream in (stuck_out, stuck_in, live_out, live_in):
        stream.close()


def test_a_session_killed_mid_burst_leaves_the_others_served(
    home: Path, serve_env: dict[str, str]
) -> None:
    with serve(serve_env, home.parent, "a") as a, serve(serve_env, home.parent, "b") as b:
        a.open_like_claude_code()
        b.open_like_claude_code()
        for client in (a, b):  # both sessions served (a session opening races the CLI)
            assert "result" in client.call_tool("runner_status", {"limit": 0})
        cli = [sys.executable, "-m", "fleetbus.server", "call", "runner.dispatch"]
        first = []
        for n in range(20):  # dispatched from the CLI: their events go to every session
            args = json.dumps({"agent": "quick", "prompt": "x", "workspace": f"acme/kill/t{n}"})
            done = subprocess.run([*cli, args], env=serve_env, capture_output=True, text=True)
            assert done.returncode == 0, done.stderr
            first.append(json.loads(done.stdout)["run_id"])
            if n == 5:
                b.proc.kill()
        try:
            a.wait_for(lambda _: all(run_status(a, r) == "completed" for r in first), 30)
        except AssertionError:
            raise AssertionError(str({r: run_status(a, r) for r in first})) from None
        assert "result" in a.call("ping")
    assert "Traceback" not in (home / "hub.log").read_text()


def test_the_packaged_tool_list_is_the_builtin_plugins_list() -> None:
    """A home never used gets its first tools/list from default-tools.json."""
    from fleetbus.server.tools import main as tools_main

    assert tools_main([]) == 0, "run python -m fleetbus.server.tools --write"


def test_a_client_that_leaves_while_its_hub_starts_does_not_fail_the_next(
    home: Path, serve_env: dict[str, str]
) -> None:
    """The first relay answers from the shipped tool list and exits while the hub it
    spawned is still starting (its spawn lock goes with it); the next one waits for that
    hub instead of failing on a second."""
    with serve(serve_env, home.parent, "first") as first:
        first.open()
        assert first.call("tools/list")["result"]["tools"]
    with serve(serve_env, home.parent, "second") as second:
        second.open()
        reply = second.call_tool("runner_status", {"limit": 0}, timeout=60)
        assert "result" in reply, reply
