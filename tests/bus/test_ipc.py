"""The IPC boundary blames the right party, and a connection's work ends with it."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import anyio
import pytest

from fleetbus.bus.blockingclient import reply_error as _reply_error
from fleetbus.bus.client import HubClient
from fleetbus.bus.errors import BusError, ConnectionFailed, InvalidInput
from fleetbus.bus.ipc import MAX_IN_FLIGHT
from fleetbus.bus.wire import INTERNAL_ERROR, INVALID_PARAMS
from fleetbus.testing.hub import embedded_hub

pytestmark = pytest.mark.anyio


async def rpc(stream: Any, reader: Any, req: dict[str, Any]) -> dict[str, Any]:
    await stream.send(json.dumps(req).encode() + b"\n")
    with anyio.fail_after(10):
        return dict(json.loads(await reader.receive_until(b"\n", 1 << 20)))


async def test_a_callers_bad_params_are_invalid_params_naming_the_method(home: Path) -> None:
    from anyio.streams.buffered import BufferedByteReceiveStream

    async with embedded_hub(home) as hub:
        stream = await anyio.connect_unix(hub.socket_path)
        async with stream:
            reader = BufferedByteReceiveStream(stream)
            reply = await rpc(
                stream,
                reader,
                {"jsonrpc": "2.0", "id": 1, "method": "perform", "params": {"bogus": 1}},
            )
            assert reply["error"]["code"] == INVALID_PARAMS
            assert reply["error"]["message"].startswith("bad params for perform:")
            ok = await rpc(
                stream,
                reader,
                {
                    "jsonrpc": "2.0",
                    "id": 2,
                    "method": "perform",
                    "params": {"action": "hub.ping", "input": {"echo": "x"}},
                },
            )
            assert ok["result"]["echo"] == "x"


def test_errors_are_blamed_by_their_code() -> None:
    assert isinstance(_reply_error({"code": INVALID_PARAMS, "message": "m"}), InvalidInput)
    internal = _reply_error({"code": INTERNAL_ERROR, "message": "internal error: TypeError: x"})
    assert type(internal) is BusError and "the hub failed" in internal.message
    lost = _reply_error(
        {"code": -32000, "message": "m", "data": {"type": "ConnectionFailed", "message": "gone"}}
    )
    assert isinstance(lost, ConnectionFailed)


async def test_subscriptions_end_with_their_connection(home: Path) -> None:
    def ipc_subs() -> int:  # the hub's own subscribers may still be starting
        return sum(1 for s in hub.bus.subscriber_stats() if s["name"].startswith("ipc:"))

    async with embedded_hub(home) as hub:
        async with HubClient.open(hub.socket_path) as client:
            await client.call("subscribe", {"topics": ["channel"]})
            await client.call("subscribe", {"topics": ["runner.*"]})
            assert ipc_subs() == 2
        with anyio.fail_after(10):
            while ipc_subs():
                await anyio.wait_all_tasks_blocked()


async def test_many_requests_in_flight_on_one_connection_all_get_answers(home: Path) -> None:
    async with embedded_hub(home) as hub, HubClient.open(hub.socket_path) as client:
        results: list[Any] = []

        async def ping(n: int) -> None:
            results.append(await client.perform("hub.ping", {"echo": str(n)}))

        with anyio.fail_after(60):
            async with anyio.create_task_group() as tg:
                for n in range(MAX_IN_FLIGHT * 3):
                    tg.start_soon(ping, n)
        assert sorted(int(r["echo"]) for r in results) == list(range(MAX_IN_FLIGHT * 3))
