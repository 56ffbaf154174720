"""End to end with the real Claude Code: a run dispatched through `fleetbus serve` comes back
to the model as a channel event.

Claude Code runs interactively (print mode never delivers channels) in a private tmux server,
with `--dangerously-load-development-channels server:fleetbus`, against a fake Anthropic
Messages API on 127.0.0.1 (`fleetbus.testing.fake_anthropic`). The fake model answers the
prompt with a `runner_dispatch` tool call for the fake agent, ends its turn once it has the
result, and the test waits for a later request to the API that carries the
`<channel source="fleetbus" ... run_id=... status="completed">` block of that run.

Offline and private: HOME is a temporary directory whose `.claude.json` has onboarding done,
the API key approved, the project trusted with its `fleetbus` server, and the channels
rollout flag (`tengu_harbor`) cached; non-essential traffic and the official marketplace
install are off, and the fake API is also the HTTPS proxy, so anything else Claude Code
tries to reach is refused (and listed in the request log). Written against Claude Code
2.1.328, which CI installs into `.npm-tools/` (see `.ci/run`); locally the test is skipped
when Claude Code or tmux is missing, and fails under CI.
"""

from __future__ import annotations

import json
import socket
import sys
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fleetbus.testing.clients import missing, npm_bin, run_status
from fleetbus.testing.fake_anthropic import (
    FakeAnthropic,
    Repeatedly,
    Reply,
    Request,
    Step,
    channel_events,
    has_tool_result,
    offers_tool,
    text,
    tool_use,
    when,
)
from fleetbus.testing.processes import reap_runs, wait_for
from fleetbus.testing.tmux import Tmux, tmux_binary

REPO = Path(__file__).resolve().parents[2]

API_KEY = "sk-ant-api03-fleetbus-test-" + "0" * 60 + "-fakeAA"
PROMPT = "Run the fake agent in workspace t/cc with fleetbus."
DISPATCH = "mcp__fleetbus__runner_dispatch"
DISPATCH_ID = "toolu_fleetbus_dispatch_1"
RUN = {"agent": "fake", "prompt": "echo hello from claude code", "workspace": "t/cc"}
WAIT_TOOL = "WaitForMcpServers"  # Claude Code's tool for servers still connecting
DIALOG = "Loading development channels"
DIALOG_CHOICE = "I am using this for local development"

STARTUP_TIMEOUT = 30  # Claude Code up and showing the channels warning
DISPATCH_TIMEOUT = 30  # the tool call made and its result sent back to the model
RUN_TIMEOUT = 15  # the fake agent's run completed, as the hub sees it
EVENT_TIMEOUT = 15  # the completion's channel event in a request to the model


def claude_env(env: dict[str, str], user_home: Path, api: FakeAnthropic) -> dict[str, str]:
    """The test's fleetbus environment for Claude Code: private HOME, the fake API, no
    traffic to anything but 127.0.0.1."""
    dropped = (
        "ANTHROPIC_",
        "CLAUDE_",
        "TMUX",
        "HTTP_PROXY",
        "HTTPS_PROXY",
        "ALL_PROXY",
        "NO_PROXY",
    )
    out = {
        k: v
        for k, v in env.items()
        if not k.upper().startswith(dropped) and k not in ("MCP_TIMEOUT", "DEBUG")
    }
    out.update(
        HOME=str(user_home),
        ANTHROPIC_BASE_URL=api.url,
        ANTHROPIC_API_KEY=API_KEY,
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
        CLAUDE_CODE_GB_DISK_CACHE_WHEN_TELEMETRY_OFF="1",
        CLAUDE_CODE_DISABLE_OFFICIAL_MARKETPLACE_AUTOINSTALL="1",
        DISABLE_AUTOUPDATER="1",
        ENABLE_TOOL_SEARCH="false",  # else MCP tools are deferred behind a search tool
        # Anything that is not the fake API goes to the fake API as a proxy, which refuses.
        HTTPS_PROXY=api.url,
        HTTP_PROXY=api.url,
        https_proxy=api.url,
        http_proxy=api.url,
        NO_PROXY="127.0.0.1,localhost",
        no_proxy="127.0.0.1,localhost",
    )
    if not any(out.get(k) for k in ("LC_ALL", "LC_CTYPE", "LANG")):
        out["LANG"] = "C.UTF-8"
    return out


def write_claude_config(user_home: Path, project: Path, env: dict[str, str]) -> None:
    """`~/.claude.json`: onboarded, key approved, project trusted with its fleetbus server,
    channels rolled out."""
    server = {
        "type": "stdio",
        "command": sys.executable,
        "args": ["-m", "fleetbus.server", "serve"],
        "env": {k: env[k] for k in ("FLEETBUS_HOME", "XDG_CONFIG_HOME")},
    }
    config = {
        "hasCompletedOnboarding": True,
        "customApiKeyResponses": {"approved": [API_KEY[-20:]], "rejected": []},
        "cachedGrowthBookFeatures": {"tengu_harbor": True},
        "projects": {
            str(project): {
                "hasTrustDialogAccepted": True,
                "mcpServers": {"fleetbus": server},
            }
        },
    }
    (user_home / ".claude.json").write_text(json.dumps(config, indent=2))


def is_the_prompt(request: Request) -> bool:
    return any(PROMPT in chunk for chunk in request.texts())


def prompt_with_tools(request: Request) -> bool:
    """The main conversation's prompt, with fleetbus' tools on offer."""
    return DISPATCH in request.tools and is_the_prompt(request)


def wait_for_server(request: Request) -> Reply | None:
    """The prompt may reach the model before fleetbus has connected: Claude Code then
    offers WaitForMcpServers instead of fleetbus' tools, and a model would call it (again,
    when it answers "Still connecting")."""
    if is_the_prompt(request) and DISPATCH not in request.tools and WAIT_TOOL in request.tools:
        return tool_use(WAIT_TOOL, {"servers": ["fleetbus"]})
    return None


def completed_event(run_id: str) -> Callable[[Request], bool]:
    """Whether a request carries the channel event of run `run_id` completing."""

    def found(request: Request) -> bool:
        for event in channel_events(request, "fleetbus"):
            meta = event.meta
            if meta.get("run_id") == run_id and meta.get("status") == "completed":
                return True
            # a burst arrives as one coalesced event: run_ids lists the runs
            if run_id in meta.get("run_ids", "").split(",") and (
                f"{run_id} completed" in event.content
            ):
                return True
        return False

    return found


def mcp_log(debug_log: Path, limit: int = 40) -> str:
    """What Claude Code's debug log says about its MCP servers and channels."""
    try:
        lines = debug_log.read_text(errors="replace").splitlines()
    except OSError:
        return "(no debug log)"
    keep = [
        line[:400]
        for line in lines
        if "MCP server" in line or "hannel" in line or "[ERROR]" in line
    ]
    return "\n".join(keep[-limit:]) or "(nothing about MCP)"


@pytest.mark.slow
def test_claude_code_gets_the_channel_event_of_its_run(
    home: Path, env: dict[str, str], tmp_path: Path
) -> None:
    claude = npm_bin("claude", REPO)
    tmux_bin = tmux_binary() or missing("tmux", "apt-get install tmux")
    user_home = tmp_path / "user-home"
    project = (tmp_path / "project").resolve()
    user_home.mkdir()
    project.mkdir()
    debug_log = tmp_path / "claude-debug.log"

    script: list[Step] = [
        when(prompt_with_tools, tool_use(DISPATCH, RUN, id=DISPATCH_ID)),
        Repeatedly(wait_for_server),
        has_tool_result(text("Dispatched; I will wait for its channel event."), DISPATCH_ID),
    ]
    argv = [
        str(claude),
        "--dangerously-load-development-channels",
        "server:fleetbus",
        "--allowedTools",
        DISPATCH,
        "--debug-file",
        str(debug_log),
        "--",  # the prompt is not one more value of the list options above
        PROMPT,
    ]
    # home's parent is a short temporary directory: the socket path fits
    tmux_socket = home.parent / "tmux.sock"
    with FakeAnthropic(script) as api:
        cenv = claude_env(env, user_home, api)
        write_claude_config(user_home, project, cenv)
        with Tmux(tmux_socket, env=cenv, binary=tmux_bin) as tmux:

            def report(what: str) -> str:
                shown = "\n".join(line for line in tmux.screen().splitlines() if line.strip())
                return (
                    f"{what}\n--- Claude Code's screen ---\n{shown}\n"
                    f"--- requests to the fake API ---\n{api.log()}\n"
                    f"--- Claude Code's debug log (MCP) ---\n{mcp_log(debug_log)}"
                )

            try:
                tmux.start(argv, cwd=project)

                # 1. The development channels warning, accepted with Enter (its first
                #    choice, "I am using this for local development", is selected).
                screen = tmux.wait_for_text(DIALOG_CHOICE, timeout=STARTUP_TIMEOUT)
                assert screen is not None and DIALOG in screen, report(
                    "Claude Code did not show the development channels warning"
                )
                tmux.send_keys("Enter")
                if not tmux.wait_until(lambda shown: DIALOG not in shown, timeout=5):
                    tmux.send_keys("Enter")  # pressed before the dialog took keys: again
                gone = tmux.wait_until(lambda shown: DIALOG not in shown, timeout=10)
                assert gone is not None, report(
                    "the development channels warning did not go away on Enter"
                )

                # 2. The model's tool call reached fleetbus serve and started a run.
                answered = api.wait_for(
                    lambda r: r.tool_result(DISPATCH_ID) is not None, timeout=DISPATCH_TIMEOUT
                )
                assert answered is not None, report(
                    f"no request to the API carried the result of the {DISPATCH} call"
                )
                raw = answered.tool_result(DISPATCH_ID) or ""
                try:
                    result = json.loads(raw)
                except ValueError:
                    result = {}
                run_id = result.get("run_id")
                assert run_id and result.get("status") in ("running", "completed"), report(
                    f"runner_dispatch did not start a run: {raw!r}"
                )

                # 3. The hub ran it to completion.
                seen: list[dict[str, Any] | None] = [None]

                def completed() -> bool:
                    seen[0] = run_status(env, run_id)
                    return seen[0] is not None and seen[0]["status"] == "completed"

                assert wait_for(completed, timeout=RUN_TIMEOUT), report(
                    f"run {run_id} did not complete: {seen[0]}"
                )

                # 4. Its completion came back to the model as a fleetbus channel event.
                event = api.wait_for(completed_event(run_id), timeout=EVENT_TIMEOUT)
                assert event is not None, report(
                    f"no request to the API carried the channel event of run {run_id} "
                    '(<channel source="fleetbus" run_id=... status="completed">)'
                )
                assert event.seq >= answered.seq
            finally:
                tmux.kill()
                reap_runs(home)


# -- the fake API itself (no Claude Code needed) ----------------------------------------------
DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # never a proxy


def post(api: FakeAnthropic, path: str, body: dict[str, Any]) -> tuple[int, str, str]:
    request = urllib.request.Request(api.url + path, data=json.dumps(body).encode(), method="POST")
    request.add_header("Content-Type", "application/json")
    try:
        with DIRECT.open(request, timeout=10) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers["Content-Type"], e.read().decode()


def sse(body: str) -> list[tuple[str, dict[str, Any]]]:
    events = []
    for chunk in body.strip().split("\n\n"):
        fields = dict(line.split(": ", 1) for line in chunk.splitlines())
        events.append((fields["event"], json.loads(fields["data"])))
    return events


def turn(
    *content: dict[str, Any], stream: bool = False, tools: tuple[str, ...] = ()
) -> dict[str, Any]:
    return {
        "model": "claude-test",
        "max_tokens": 100,
        "stream": stream,
        "tools": [{"name": name, "input_schema": {"type": "object"}} for name in tools],
        "messages": [{"role": "user", "content": list(content)}],
    }


def test_fake_api_follows_its_script_and_answers_the_rest() -> None:
    call = tool_use("mcp__x__go", {"n": 1}, id="toolu_1")
    script = [offers_tool("mcp__x__go", call), has_tool_result(text("done"), "toolu_1")]
    with FakeAnthropic(script) as api:
        assert api.url.startswith("http://127.0.0.1:")
        # a side request (no tools) gets the default reply; the script waits
        status, kind, body = post(api, "/v1/messages", turn({"type": "text", "text": "title?"}))
        assert (status, kind) == (200, "application/json")
        assert json.loads(body)["content"] == [{"type": "text", "text": "OK."}]
        # the first request offering the tool gets the call, streamed
        first = turn({"type": "text", "text": "go"}, stream=True, tools=("mcp__x__go",))
        status, kind, body = post(api, "/v1/messages?beta=true", first)
        assert (status, kind) == (200, "text/event-stream")
        events = sse(body)
        assert [name for name, _ in events] == [
            "message_start",
            "content_block_start",
            "content_block_delta",
            "content_block_stop",
            "message_delta",
            "message_stop",
        ]
        assert events[1][1]["content_block"] == {
            "type": "tool_use",
            "id": "toolu_1",
            "name": "mcp__x__go",
            "input": {},
        }
        assert events[2][1]["delta"] == {"type": "input_json_delta", "partial_json": '{"n": 1}'}
        assert events[4][1]["delta"]["stop_reason"] == "tool_use"
        # fired steps are not asked again: the same request now gets the default
        status, _, body = post(api, "/v1/messages", {**first, "stream": False})
        assert json.loads(body)["stop_reason"] == "end_turn"
        result = {"type": "tool_result", "tool_use_id": "toolu_1", "content": "ok"}
        status, _, body = post(api, "/v1/messages", turn(result))
        assert json.loads(body)["content"] == [{"type": "text", "text": "done"}]
        # count_tokens and anything else
        status, _, body = post(api, "/v1/messages/count_tokens", turn())
        assert status == 200 and json.loads(body)["input_tokens"] > 0
        assert post(api, "/api/whatever", {})[:1] == (200,)
        hello = urllib.request.Request(api.url + "/api/hello", method="HEAD")
        with DIRECT.open(hello, timeout=10) as response:
            assert response.status == 200
        found = api.wait_for(lambda r: r.tool_result("toolu_1") == "ok", timeout=5)
        assert found is not None and found.is_messages
        assert len(api.messages_requests()) == 4
        assert "-> mcp__x__go (tool_use)" in api.log()


def test_fake_api_repeats_a_repeated_step() -> None:
    again = Repeatedly(when(lambda r: "wait" in r.texts(), text("waiting")))
    with FakeAnthropic([again, when(lambda r: True, text("next"))]) as api:
        said = [
            json.loads(post(api, "/v1/messages", turn({"type": "text", "text": t}))[2])
            for t in ("wait", "wait", "go", "go")
        ]
        assert [m["content"][0]["text"] for m in said] == ["waiting", "waiting", "next", "OK."]


def test_fake_api_refuses_to_proxy_and_reports_script_errors() -> None:
    def broken(request: Request) -> Reply | None:
        raise RuntimeError("boom")

    with FakeAnthropic([broken]) as api:
        status, _, body = post(api, "/v1/messages", turn({"type": "text", "text": "hi"}))
        assert status == 500 and "boom" in body
        assert "RuntimeError: boom" in api.log()
        with socket.create_connection(("127.0.0.1", int(api.url.rsplit(":", 1)[1]))) as conn:
            conn.sendall(b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n\r\n")
            answer = b""
            while chunk := conn.recv(4096):
                answer += chunk
            assert answer.startswith(b"HTTP/1.0 403"), answer
        assert api.wait_for(lambda r: r.method == "CONNECT", timeout=5) is not None


def test_channel_events_reads_both_forms() -> None:
    mid_turn = (
        "A message arrived from fleetbus while you were working:\n"
        '<channel source="fleetbus" run_id="r1" status="running">\nstarted\n</channel>'
    )
    between = (
        '<channel source="fleetbus" run_id="r1" status="completed" x="a &amp; b">\ndone\n</channel>'
    )
    other = '<channel source="other" run_id="r1">x</channel>'
    body = {
        "messages": [
            {"role": "system", "content": mid_turn},
            {
                "role": "user",
                "content": [{"type": "text", "text": between}, {"type": "text", "text": other}],
            },
        ]
    }
    raw = json.dumps(body).encode()
    request = Request(seq=1, method="POST", path="/v1/messages", headers={}, body=body, raw=raw)
    events = channel_events(request, "fleetbus")
    assert [(e.meta["status"], e.content) for e in events] == [
        ("running", "started"),
        ("completed", "done"),
    ]
    assert events[1].meta["x"] == "a & b"
    assert len(channel_events(request)) == 3
    assert completed_event("r1")(request) and not completed_event("r2")(request)
