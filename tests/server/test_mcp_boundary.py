"""`fleetbus serve` at its edges: a cancelled watch leaves nothing behind in the hub, an
error names the action that was called, an oversized argument costs no one the connection.
Driven as a real subprocess over stdio with `fleetbus.testing.mcp_wire`."""

from __future__ import annotations

import fcntl
import json
import time
from pathlib import Path
from typing import Any

import anyio
import pytest

from fleetbus.bus.client import HubClient
from fleetbus.bus.ipc import MAX_IN_FLIGHT
from fleetbus.bus.paths import Home
from fleetbus.testing.mcp_wire import serve
from fleetbus.testing.processes import wait_for


def hub_subscribers(home: Path) -> list[dict[str, Any]]:
    async def ask() -> list[dict[str, Any]]:
        async with HubClient.open(Home(home).socket) as client:
            return list((await client.status())["subscribers"])

    return anyio.run(ask)


def local_subscriptions(home: Path) -> int:
    """Subscriptions the hub's MCP sessions hold (LocalClient names them `local`)."""
    return sum(1 for s in hub_subscribers(home) if s["name"] == "local")


def tool_error(reply: dict[str, Any]) -> str:
    assert "result" in reply and reply["result"].get("isError"), reply
    return str(reply["result"]["content"][0]["text"])


def test_a_cancelled_watch_leaves_no_subscription_in_the_hub(
    home: Path, serve_env: dict[str, str]
) -> None:
    gate = open(serve_env["GATE"], "w")  # noqa: SIM115 - closed below
    fcntl.flock(gate, fcntl.LOCK_EX)  # the run waits on the gate: it stays running
    try:
        with serve(serve_env, home.parent) as client:
            client.open()
            reply = client.call_tool(
                "runner_dispatch", {"agent": "gated", "prompt": "go", "workspace": "a/b/w"}
            )
            run_id = reply["result"]["structuredContent"]["run_id"]
            before = local_subscriptions(home)
            for n in range(3):
                req_id = client.request(
                    "tools/call",
                    {
                        "name": "fleetbus_watch",
                        "arguments": {"run_ids": [run_id], "timeout_s": 100},
                    },
                )
                assert wait_for(lambda: local_subscriptions(home) == before + 1, 10), (
                    n,
                    before,
                    hub_subscribers(home),
                    client.dump(),
                )
                client.notify("notifications/cancelled", {"requestId": req_id})
                assert wait_for(lambda: local_subscriptions(home) == before, 10), (
                    f"watch {n} still subscribed after its cancel: {hub_subscribers(home)}"
                )
            # the session still works after the cancels
            status = client.call_tool("runner_status", {"run_id": run_id})
            assert not status["result"].get("isError"), status
    finally:
        fcntl.flock(gate, fcntl.LOCK_UN)
        gate.close()


def test_a_session_pipelining_calls_is_held_at_the_in_flight_limit(
    home: Path, serve_env: dict[str, str]
) -> None:
    """More calls than MAX_IN_FLIGHT sent at once: the hub takes that many, reads the rest
    as answers go out, and every call is answered; other sessions are served meanwhile."""
    extra = 20
    gate = open(serve_env["GATE"], "w")  # noqa: SIM115 - closed below
    fcntl.flock(gate, fcntl.LOCK_EX)  # the run waits on the gate: the watches wait on it
    try:
        with (
            serve(serve_env, home.parent) as client,
            serve(serve_env, home.parent, "other") as other,
        ):
            client.open()
            other.open()
            reply = client.call_tool(
                "runner_dispatch", {"agent": "gated", "prompt": "go", "workspace": "a/b/w"}
            )
            run_id = reply["result"]["structuredContent"]["run_id"]
            before = local_subscriptions(home)
            watch = {"name": "fleetbus_watch", "arguments": {"run_ids": [run_id], "timeout_s": 60}}
            ids = [client.request("tools/call", watch) for _ in range(MAX_IN_FLIGHT + extra)]
            assert wait_for(lambda: local_subscriptions(home) == before + MAX_IN_FLIGHT, 30), (
                hub_subscribers(home)
            )
            status = other.call_tool("runner_status", {"run_id": run_id})
            assert not status["result"].get("isError"), status
            assert local_subscriptions(home) == before + MAX_IN_FLIGHT  # the rest unread
            fcntl.flock(gate, fcntl.LOCK_UN)  # the run ends: every watch is answered
            for req_id in ids:
                answer = client.response(req_id, 60)
                assert not answer["result"].get("isError"), answer
            assert wait_for(lambda: local_subscriptions(home) == before, 10), hub_subscribers(home)
    finally:
        fcntl.flock(gate, fcntl.LOCK_UN)
        gate.close()


def test_thousands_of_pipelined_requests_are_all_answered(
    home: Path, serve_env: dict[str, str]
) -> None:
    """The relay never blocks writing to the hub while the hub waits for it to read its
    answers (large answers, more requests than the hub takes at once, most of them held
    while the hub's session opens and then sent in one go)."""
    with serve(serve_env, home.parent) as client:
        client.open()
        padded = {"_meta": {"pad": "x" * 4000}}  # requests outgrow the socket's buffers too
        ids = [client.request("tools/list", padded) for _ in range(2000)]
        deadline = time.monotonic() + 60
        for req_id in ids:
            answer = client.response(req_id, max(0.1, deadline - time.monotonic()))
            assert "result" in answer, req_id


def test_an_error_names_the_action_that_was_called(home: Path, serve_env: dict[str, str]) -> None:
    with serve(serve_env, home.parent) as client:
        client.open()
        message = tool_error(client.call_tool("runner_kill", {"agent": "nope"}))
        assert message.startswith("runner.kill:"), message
        assert "runner.dispatch" not in message, message
        assert "agent" in message and "unknown agent" in message, message


def test_an_oversized_argument_is_refused_and_the_session_goes_on(
    home: Path, serve_env: dict[str, str]
) -> None:
    with serve(serve_env, home.parent) as client:
        client.open()
        big = "x" * (17 * 1024 * 1024)
        reply = client.call_tool(
            "runner_dispatch", {"agent": "gated", "prompt": big, "workspace": "a/b/big"}, 60
        )
        text = reply["error"]["message"] if "error" in reply else tool_error(reply)
        assert "16 MiB" in text, text
        assert "lost the connection" not in text, text
        after = client.call_tool("runner_status", {})
        assert not after["result"].get("isError"), after


@pytest.mark.anyio
async def test_the_hubs_mcp_session_refuses_an_oversized_message_and_goes_on(home: Path) -> None:
    """Behind the relay, the hub's own reader of a relayed session skips an over-long
    line with an answer, instead of ending the session."""
    from anyio.streams.buffered import BufferedByteReceiveStream

    from fleetbus.bus.wire import MAX_LINE
    from fleetbus.testing.hub import embedded_hub

    async with embedded_hub(home) as hub:
        stream = await anyio.connect_unix(hub.socket_path)
        async with stream:
            reader = BufferedByteReceiveStream(stream)

            async def reply() -> dict[str, Any]:
                with anyio.fail_after(30):
                    return dict(json.loads(await reader.receive_until(b"\n", 1 << 20)))

            await stream.send(
                b'{"jsonrpc":"2.0","id":1,"method":"mcp.open","params":{"raw":true}}\n'
            )
            assert (await reply())["result"] == {"ok": True}
            big = b"x" * (MAX_LINE + 1024)
            await stream.send(
                b'{"jsonrpc":"2.0","id":2,"method":"ping","params":{"x":"' + big + b'"}}\n'
            )
            refused = await reply()
            assert refused["id"] == 2 and "16 MiB" in refused["error"]["message"], refused
            await stream.send(b'{"jsonrpc":"2.0","id":3,"method":"ping"}\n')
            assert (await reply()) == {"jsonrpc": "2.0", "id": 3, "result": {}}
