"""The hub's socket refuses a caller's junk as the caller's fault (-32602 naming the field,
-32600/-32700 for what is not a request), never as an internal error; a refused request
leaves nothing behind, and one bad request never costs the connection."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
from anyio.streams.buffered import BufferedByteReceiveStream
from pydantic import BaseModel

from fleetbus.bus.client import HubClient
from fleetbus.bus.errors import InvalidInput
from fleetbus.bus.hub import Hub
from fleetbus.bus.wire import INVALID_PARAMS, INVALID_REQUEST, MAX_LINE, PARSE_ERROR
from fleetbus.testing.hub import embedded_hub

pytestmark = pytest.mark.anyio

BIG = MAX_LINE + 1024 * 1024  # 17 MiB


class Raw:
    """One raw connection to the hub's socket: lines in, replies out."""

    def __init__(self, stream: Any) -> None:
        self.stream = stream
        self.reader = BufferedByteReceiveStream(stream)

    async def send_line(self, line: bytes) -> None:
        await self.stream.send(line + b"\n")

    async def reply(self) -> dict[str, Any]:
        with anyio.fail_after(20):
            return dict(json.loads(await self.reader.receive_until(b"\n", 1 << 20)))

    async def call(self, line: bytes) -> dict[str, Any]:
        await self.send_line(line)
        return await self.reply()

    async def ping(self, n: int = 99) -> None:
        reply = await self.call(
            json.dumps(
                {
                    "jsonrpc": "2.0",
                    "id": n,
                    "method": "perform",
                    "params": {"action": "hub.ping", "input": {"echo": "still here"}},
                }
            ).encode()
        )
        assert reply == {"jsonrpc": "2.0", "id": n, "result": reply["result"]}
        assert reply["result"]["echo"] == "still here"


@asynccontextmanager
async def raw(hub: Hub) -> AsyncIterator[Raw]:
    stream = await anyio.connect_unix(hub.socket_path)
    async with stream:
        yield Raw(stream)


def request(method: str, params: str) -> bytes:
    """A request line with `params` as written (raw JSON: NaN and escapes as sent)."""
    return f'{{"jsonrpc":"2.0","id":1,"method":"{method}","params":{params}}}'.encode()


JUNK = {
    "topics of numbers": (request("subscribe", '{"topics":[1,2]}'), "topics.0"),
    "a fractional buffer": (request("subscribe", '{"buffer":1.5}'), "buffer"),
    "a zero buffer": (request("subscribe", '{"buffer":0}'), "buffer"),
    "since not a number": (request("subscribe", '{"since":"x"}'), "since"),
    "timeout a string": (request("perform", '{"action":"hub.ping","timeout":"x"}'), "timeout"),
    "timeout NaN": (request("perform", '{"action":"hub.ping","timeout":NaN}'), "timeout"),
    "timeout negative": (request("perform", '{"action":"hub.ping","timeout":-1}'), "timeout"),
    "an unknown param": (request("status", '{"bogus":1}'), "bogus"),
    "a job wait of Infinity": (request("job", '{"job_id":"j","wait":Infinity}'), "wait"),
    "a surrogate in a prompt": (
        request("perform", '{"action":"runner.dispatch","input":{"prompt":"a\\ud800b"}}'),
        "params.input.prompt",
    ),
    "a surrogate in a run id": (
        request("perform", '{"action":"runner.status","input":{"run_id":"\\udfff"}}'),
        "params.input.run_id",
    ),
    "a surrogate in an agent name": (
        request("perform", '{"action":"runner.dispatch","input":{"agent":"\\ud83d"}}'),
        "params.input.agent",
    ),
    "a surrogate in a key": (
        request("perform", '{"action":"hub.ping","input":{"\\ud800":1}}'),
        "lone surrogate",
    ),
    "nesting past the limit": (
        request("perform", '{"action":"hub.ping","input":' + "[" * 150 + "]" * 150 + "}"),
        "nested deeper than",
    ),
}


@pytest.mark.parametrize("line,field", JUNK.values(), ids=list(JUNK))
async def test_junk_params_are_invalid_params_naming_the_field(
    home: Path, line: bytes, field: str
) -> None:
    async with embedded_hub(home) as hub, raw(hub) as conn:
        reply = await conn.call(line)
        assert reply["id"] == 1, reply
        assert reply["error"]["code"] == INVALID_PARAMS, reply
        assert field in reply["error"]["message"], reply
        assert "internal error" not in reply["error"]["message"]
        subs = [s["name"] for s in hub.bus.subscriber_stats()]
        assert not [n for n in subs if n.startswith("ipc:")], subs  # nothing left registered
        await conn.ping()


@pytest.mark.parametrize("depth", [5_000, 100_000])
async def test_deep_nesting_is_a_bad_request_not_an_internal_error(home: Path, depth: int) -> None:
    async with embedded_hub(home) as hub, raw(hub) as conn:
        line = request("perform", '{"action":"hub.ping","input":' + "[" * depth + "]" * depth + "}")
        reply = await conn.call(line)
        assert reply["error"]["code"] in (INVALID_REQUEST, PARSE_ERROR), reply
        assert "nested too deeply" in reply["error"]["message"], reply
        await conn.ping()


async def test_a_refused_subscribe_is_not_left_registered(home: Path) -> None:
    """Reproduced: `subscribe {"since": "x"}` was refused but stayed in hub.status."""
    async with embedded_hub(home) as hub:

        def ipc_subs() -> list[str]:  # hub.status as a user reads it
            return [s["name"] for s in hub.status()["subscribers"] if s["name"].startswith("ipc:")]

        async with HubClient.open(hub.socket_path) as client:
            with pytest.raises(InvalidInput, match="since"):
                await client.call("subscribe", {"topics": ["runner.*"], "since": "x"})
            assert ipc_subs() == []
            await client.call("subscribe", {"topics": ["runner.*"], "since": 0})
            assert len(ipc_subs()) == 1
        with anyio.fail_after(10):
            while ipc_subs():
                await anyio.wait_all_tasks_blocked()


@pytest.mark.parametrize("size", [BIG, MAX_LINE + 16], ids=["17MiB", "just-over"])
async def test_an_oversized_request_is_answered_and_the_connection_goes_on(
    home: Path, size: int
) -> None:
    async with embedded_hub(home) as hub, raw(hub) as conn:
        prompt = "x" * size
        line = json.dumps(
            {
                "jsonrpc": "2.0",
                "id": 7,
                "method": "perform",
                "params": {"action": "hub.ping", "input": {"echo": prompt}},
            }
        ).encode()
        reply = await conn.call(line)
        assert reply["id"] == 7, reply
        assert reply["error"]["code"] == INVALID_REQUEST
        assert reply["error"]["message"].startswith("request larger than 16 MiB"), reply
        await conn.ping()
        # an id the hub cannot find up front is answered with a null id, and still goes on
        reply = await conn.call(b'{"params":{"x":"' + b"y" * BIG + b'"},"id":8}')
        assert reply["id"] is None and "16 MiB" in reply["error"]["message"], reply
        await conn.ping(100)


async def test_the_client_refuses_an_oversized_request_and_keeps_its_connection(
    home: Path,
) -> None:
    async with embedded_hub(home) as hub, HubClient.open(hub.socket_path) as client:
        with pytest.raises(InvalidInput, match=r"^hub\.ping: request larger than 16 MiB"):
            await client.perform("hub.ping", {"echo": "x" * BIG})
        assert (await client.perform("hub.ping", {"echo": "ok"}))["echo"] == "ok"
        assert not client.disconnected.is_set()


async def test_other_callers_keep_their_connection_while_one_sends_too_much(home: Path) -> None:
    async with embedded_hub(home) as hub, HubClient.open(hub.socket_path) as shared:
        async with raw(hub) as bad:
            await bad.send_line(
                b'{"jsonrpc":"2.0","id":1,"method":"status","params":{"x":"' + b"y" * BIG + b'"}}'
            )
            assert (await shared.perform("hub.ping", {"echo": "a"}))["echo"] == "a"
            assert "16 MiB" in (await bad.reply())["error"]["message"]
        assert (await shared.perform("hub.ping", {"echo": "b"}))["echo"] == "b"


async def test_a_cancelled_subscriber_leaves_no_subscription_behind(home: Path) -> None:
    """The SDK client's subscription lives exactly as long as its block, even when the
    block is cancelled (the undo is sent shielded) and while the connection stays open."""
    async with embedded_hub(home) as hub, HubClient.open(hub.socket_path) as client:

        def ipc_subs() -> int:
            return sum(1 for s in hub.bus.subscriber_stats() if s["name"].startswith("ipc:"))

        for _ in range(3):
            subscribed = anyio.Event()
            with anyio.move_on_after(30) as scope:
                async with anyio.create_task_group() as tg:

                    async def watch(ready: anyio.Event) -> None:
                        async with client.subscribe(["test.*"]) as messages:
                            ready.set()
                            async for _message in messages:
                                pass

                    tg.start_soon(watch, subscribed)
                    await subscribed.wait()
                    assert ipc_subs() == 1
                    tg.cancel_scope.cancel()
            assert not scope.cancelled_caught
            with anyio.fail_after(10):
                while ipc_subs():
                    await anyio.wait_all_tasks_blocked()
        assert (await client.perform("hub.ping", {"echo": "ok"}))["echo"] == "ok"


class Named(BaseModel):
    agent: str = ""


async def test_an_invalid_input_names_the_action_called_not_the_helpers() -> None:
    """Reproduced: `runner.kill {"agent": "nope"}` said `runner.dispatch: invalid input`,
    from a validation helper shared by both. The bus names the action called; an error
    from a nested perform keeps the name of the action that refused it."""
    from fleetbus.bus import Bus
    from fleetbus.bus.actions import make_spec

    def shared_check(agent: str) -> None:
        raise InvalidInput.from_errors("x.dispatch", [{"field": "agent", "message": "unknown"}])

    async def dispatch(req: Named) -> None:
        shared_check(req.agent)

    async def kill(req: Named) -> None:
        shared_check(req.agent)

    async def outer(req: Named) -> None:
        await bus.perform("x.dispatch", {"agent": req.agent})

    async def typo(req: Named) -> None:
        await bus.perform("x.dispatch", {"agnet": req.agent})

    async with Bus() as bus:
        for name, handler in [
            ("x.dispatch", dispatch),
            ("x.kill", kill),
            ("x.outer", outer),
            ("x.typo", typo),
        ]:
            bus.add_action(make_spec(name, handler, plugin="test"))
        with pytest.raises(InvalidInput) as kill_error:
            await bus.perform("x.kill", {"agent": "nope"})
        assert kill_error.value.message == "x.kill: invalid input: agent: unknown"
        assert kill_error.value.to_dict()["action"] == "x.kill"
        with pytest.raises(InvalidInput, match=r"^x\.dispatch: invalid input: agent: unknown"):
            await bus.perform("x.outer", {"agent": "nope"})
        with pytest.raises(InvalidInput, match=r"^x\.dispatch: invalid input: agnet"):
            await bus.perform("x.typo", {"agent": "nope"})
