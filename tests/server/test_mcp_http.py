"""`fleetbus serve --http` as a real subprocess: bearer token, Host and Origin checks, the
token file, the refusal to bind a public address unprotected, and two streamable-HTTP
sessions that each get only their own runs' channel events.

The tests pick a free port themselves and wait for the server's "serving MCP on" log line
(FLEETBUS_LOG_LEVEL=INFO). Each serve process is stopped in `finally`; the hub it starts
is stopped by the `home` fixture.
"""

from __future__ import annotations

import os
import stat
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import httpx2
import pytest
from mcp import ClientSession
from mcp.client import NotificationBinding
from mcp.client.streamable_http import streamable_http_client
from pydantic import BaseModel

from fleetbus.bus.paths import Home
from fleetbus.testing.processes import one_line_error, reap_runs
from fleetbus.testing.serving import free_port, serve_http

pytestmark = pytest.mark.anyio

Cli = Callable[..., subprocess.CompletedProcess[str]]

CONFIG = """\
agents:
  sleepy:
    command: ["sh", "-c", "sleep 1; echo done", "{prompt}"]
    prompt: arg
    concurrency: 2
"""

INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "raw-test", "version": "0"},
    },
}
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


# -- helpers ----------------------------------------------------------------------------------


async def post_initialize(url: str, **headers: str) -> httpx2.Response:
    async with httpx2.AsyncClient(timeout=20) as http:
        return await http.post(url, json=INITIALIZE, headers={**HEADERS, **headers})


@pytest.fixture
def config_env(home: Path, env: dict[str, str]) -> Iterator[dict[str, str]]:
    config = home.parent / "fleetbus.yaml"
    config.write_text(CONFIG)
    env["FLEETBUS_CONFIG"] = str(config)
    yield env
    reap_runs(home)  # agents a failed test left running


# -- auth and transport security --------------------------------------------------------------
async def test_token_host_and_origin_checks(home: Path, config_env: dict[str, str]) -> None:
    token_file = home / "token"
    assert not token_file.exists()
    with serve_http(config_env) as served:
        assert token_file.exists(), "no token file after `fleetbus serve --http` started"
        assert stat.S_IMODE(token_file.stat().st_mode) == 0o600, oct(token_file.stat().st_mode)
        token = token_file.read_text().strip()
        assert len(token) >= 20, token

        no_token = await post_initialize(served.url)
        assert no_token.status_code == 401, no_token.text
        wrong = await post_initialize(served.url, Authorization="Bearer not-the-token")
        assert wrong.status_code == 401, wrong.text
        good = {"Authorization": f"Bearer {token}"}
        evil_host = await post_initialize(served.url, **good, Host="evil.example")
        assert evil_host.status_code == 421, evil_host.text
        evil_origin = await post_initialize(served.url, **good, Origin="http://evil.example")
        assert evil_origin.status_code == 403, evil_origin.text
        ok = await post_initialize(served.url, **good, Origin=f"http://localhost:{served.port}")
        assert ok.status_code == 200, ok.text
        assert "claude/channel" in ok.text, ok.text

    # the same token on the next start
    with serve_http(config_env):
        assert token_file.read_text().strip() == token


async def test_fleetbus_token_overrides_the_token_file(
    home: Path, config_env: dict[str, str]
) -> None:
    Home(home).ensure()
    token_file = home / "token"
    fd = os.open(token_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("token-from-the-file\n")
    env = {**config_env, "FLEETBUS_TOKEN": "token-from-the-environment"}
    with serve_http(env) as served:
        from_env = await post_initialize(
            served.url, Authorization="Bearer token-from-the-environment"
        )
        assert from_env.status_code == 200, from_env.text
        from_file = await post_initialize(served.url, Authorization="Bearer token-from-the-file")
        assert from_file.status_code == 401, from_file.text
    assert token_file.read_text() == "token-from-the-file\n"


def test_a_public_host_needs_a_token_and_allowed_hosts(
    home: Path, config_env: dict[str, str], cli: Cli
) -> None:
    port = str(free_port())
    for extra_args, extra_env in [
        ((), {}),
        ((), {"FLEETBUS_TOKEN": "s3cret-token"}),
        (("--allowed-host", "fleet.example:8765"), {}),
    ]:
        proc = cli(
            "serve",
            "--http",
            "--host",
            "0.0.0.0",
            "--port",
            port,
            *extra_args,
            timeout=30,
            **extra_env,
        )
        assert proc.returncode == 2, (extra_args, extra_env, proc.stderr)
        err = one_line_error(proc)
        assert "0.0.0.0" in err and "FLEETBUS_TOKEN" in err and "--allowed-host" in err, err


# -- sessions ---------------------------------------------------------------------------------
class ChannelIn(BaseModel):
    content: Any = None
    meta: dict[str, Any] = {}


async def test_two_sessions_each_get_only_their_own_runs(
    home: Path, config_env: dict[str, str]
) -> None:
    """Two streamable-HTTP clients with the bearer token, each dispatching a run: each
    session's channel events are about its own run only."""
    events: dict[str, list[ChannelIn]] = {"a": [], "b": []}
    run_ids: dict[str, str] = {}
    own_done = {"a": anyio.Event(), "b": anyio.Event()}
    both_done = anyio.Event()

    async def session(name: str, url: str, token: str) -> None:
        async def on_channel(params: ChannelIn) -> None:
            events[name].append(params)
            if (
                params.meta.get("run_id") == run_ids.get(name)
                and params.meta.get("status") == "completed"
            ):
                own_done[name].set()

        binding = NotificationBinding(
            method="notifications/claude/channel", params_type=ChannelIn, handler=on_channel
        )
        async with (
            httpx2.AsyncClient(
                headers={"Authorization": f"Bearer {token}"},
                timeout=httpx2.Timeout(30, read=300),
            ) as http,
            streamable_http_client(url, http_client=http) as (read, write),
            ClientSession(read, write, notification_bindings=[binding]) as s,
        ):
            init = await s.initialize()
            assert init.capabilities.experimental == {"claude/channel": {}}
            # a 1 s agent: its finish comes after the client's GET stream is open
            result = await s.call_tool(
                "runner_dispatch",
                {"agent": "sleepy", "prompt": f"job {name}", "workspace": f"acme/http/{name}"},
            )
            assert not result.is_error, result
            assert result.structured_content is not None
            run_ids[name] = result.structured_content["run_id"]
            await own_done[name].wait()
            if all(e.is_set() for e in own_done.values()):
                both_done.set()
            await both_done.wait()  # stay connected until the other's run ended too

    with serve_http(config_env) as served:
        token = (home / "token").read_text().strip()
        with anyio.fail_after(30):
            async with anyio.create_task_group() as tg:
                tg.start_soon(session, "a", served.url, token)
                tg.start_soon(session, "b", served.url, token)

    assert run_ids["a"] != run_ids["b"]
    for name, other in (("a", "b"), ("b", "a")):
        seen = events[name]
        assert any(e.meta.get("run_id") == run_ids[name] for e in seen), seen
        leaked = [e for e in seen if run_ids[other] in f"{e.content} {e.meta}"]
        assert not leaked, f"session {name} got session {other}'s events: {leaked}"
