"""The real Codex CLI (npm `@openai/codex`) calls fleetbus's tools over MCP, offline.

`codex exec` runs with a private HOME and CODEX_HOME whose config.toml sends every model
request to a fake Responses API on 127.0.0.1 (`fleetbus.testing.fake_openai`) and lists
fleetbus as an ordinary, optional MCP server, in the table the README gives
(`codex_mcp_table`). The fake model answers the first request with a `runner_dispatch` call
(Codex offers an MCP server's tools as the Responses namespace `mcp__<server>`) and the
second, which carries the tool's output, with a final message. The test checks that the
tools were offered in the first request, that the output carries the run id, and that the
run completes.

What Codex 0.169 does here: it starts MCP servers with a cleared environment (HOME, PATH,
LANG, SHELL, TERM and certificate variables, plus the table's `env` / `env_vars`); it sends
`initialize` as soon as it spawns the server and sends the first model request after about a
second, with only the tools of the servers that have answered both `initialize` and
`tools/list` by then (a `required = true` server is waited for instead); and `codex exec`
refuses a call to a tool without `readOnlyHint` unless the server's
`default_tools_approval_mode` is "approve".

CI installs Codex into `.npm-tools/` (see `.ci/run`); locally the test is skipped when it is
missing, and fails under CI. The hub the server starts is stopped by the `home` fixture.
"""

from __future__ import annotations

import json
import re
import sys
import urllib.request
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

from fleetbus.testing.clients import npm_bin, run, run_status
from fleetbus.testing.fake_openai import (
    API_KEY_ENV,
    FakeResponses,
    codex_config,
    function_call,
    message,
)
from fleetbus.testing.processes import reap_runs, wait_for

REPO = Path(__file__).resolve().parents[2]
SERVE = [sys.executable, "-m", "fleetbus.server", "serve"]
NAMESPACE = "mcp__fleetbus"
CODEX_TIMEOUT = 45
RUN_TIMEOUT = 30


def codex_mcp_table(command: str = "fleetbus", args: Sequence[str] = ("serve",)) -> str:
    """The `[mcp_servers.fleetbus]` table of `~/.codex/config.toml`, as the README gives it."""
    return f"""\
[mcp_servers.fleetbus]
command = {json.dumps(command)}
args = {json.dumps(list(args))}
# Codex starts MCP servers with a cleared environment: pass fleetbus's own variables on.
env_vars = ["FLEETBUS_HOME", "FLEETBUS_CONFIG", "XDG_CONFIG_HOME"]
# Let Codex call fleetbus's tools without asking (`codex exec` cannot ask, so it refuses).
default_tools_approval_mode = "approve"
"""


def codex_exec(
    codex: Path, prompt: str, *, home: Path, env: dict[str, str], cwd: Path
) -> tuple[int, str]:
    """Run `codex exec --json PROMPT` with HOME `home` and CODEX_HOME `home/.codex`: its exit
    code (-1 on timeout) and the tails of its output, for assertion messages."""
    argv = [str(codex), "exec", "--skip-git-repo-check", "--ephemeral", "--json", prompt]
    env = {k: v for k, v in env.items() if not k.startswith(("OPENAI_", "CODEX_"))}
    env.update(HOME=str(home), CODEX_HOME=str(home / ".codex"))
    proc = run(argv, env, cwd=cwd, timeout=CODEX_TIMEOUT)
    out, err = _tail(proc.stdout), _tail(proc.stderr)
    return proc.returncode, f"codex exit {proc.returncode}\n-- stdout:\n{out}\n-- stderr:\n{err}"


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(text.strip().splitlines()[-lines:])


@pytest.mark.slow
def test_codex_exec_dispatches_a_run(home: Path, env: dict[str, str], tmp_path: Path) -> None:
    codex = npm_bin("codex", REPO)
    user_home, project = tmp_path / "user-home", tmp_path / "project"
    (user_home / ".codex").mkdir(parents=True)
    project.mkdir()
    dispatch = {"agent": "fake", "prompt": "echo hello from codex", "workspace": "t/codex"}
    script = [
        [function_call("runner_dispatch", dispatch, call_id="call_1", namespace=NAMESPACE)],
        [message("Dispatched.")],
    ]
    try:
        with FakeResponses(script) as api:
            config = codex_config(api.url) + "\n" + codex_mcp_table(SERVE[0], SERVE[1:])
            (user_home / ".codex" / "config.toml").write_text(config)
            code, output = codex_exec(
                codex,
                "Start a fake agent run with fleetbus.",
                home=user_home,
                env={**env, API_KEY_ENV: "sk-fake"},
                cwd=project,
            )
            report = f"{output}\n-- requests to the fake API:\n{api.summary()}"
            requests = api.model_requests

            assert code == 0, report
            assert len(requests) >= 2, report
            offered = requests[0].namespace(NAMESPACE)
            assert offered is not None and "runner_dispatch" in offered, (
                f"the first model request did not offer fleetbus's tools ({NAMESPACE}): "
                f"`fleetbus serve` had not listed them when Codex stopped waiting\n{report}"
            )
            result = requests[1].function_call_output("call_1")
            assert result is not None, f"no function_call_output for call_1\n{report}"
            found = re.search(r'"run_id"\s*:\s*"([^"]+)"', result)
            assert found, f"no run id in the tool's output {result!r}\n{report}"
            run_id = found.group(1)

        run: dict[str, Any] | None = None

        def ended() -> bool:
            nonlocal run
            run = run_status(env, run_id)
            return run is not None and run["status"] not in ("queued", "running")

        assert wait_for(ended, timeout=RUN_TIMEOUT), f"run {run_id} still not ended: {run}"
        assert run is not None and run["status"] == "completed" and run["exit_code"] == 0, run
        assert run["log"] and "hello from codex" in Path(run["log"]).read_text(), run
    finally:
        reap_runs(home)


# -- the fake API itself (no Codex needed) ----------------------------------------------------
def post(url: str, body: dict[str, Any]) -> tuple[str, str]:
    request = urllib.request.Request(
        url, data=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    with urllib.request.urlopen(request, timeout=10) as response:
        return response.headers["Content-Type"], response.read().decode()


def sse_events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]


def test_fake_responses_answers_from_its_script() -> None:
    call = function_call("runner_status", {"limit": 1}, call_id="c9", namespace=NAMESPACE)
    with FakeResponses(
        [[call], lambda request: [message(f"got {len(request.input)} items")]]
    ) as api:
        assert api.url.startswith("http://127.0.0.1:") and api.url.endswith("/v1")
        tools = [{"type": "namespace", "name": NAMESPACE, "tools": [{"name": "runner_status"}]}]
        kind, text = post(f"{api.url}/responses", {"stream": True, "input": [], "tools": tools})
        assert kind == "text/event-stream"
        events = sse_events(text)
        assert [e["type"] for e in events] == [
            "response.created",
            "response.in_progress",
            "response.output_item.added",
            "response.output_item.done",
            "response.completed",
        ]
        completed = events[-1]["response"]
        assert completed["id"] and completed["usage"] and completed["output"] == [call]
        assert call["namespace"] == NAMESPACE and json.loads(call["arguments"]) == {"limit": 1}

        output = {"type": "function_call_output", "call_id": "c9", "output": "ok"}
        kind, text = post(f"{api.url}/responses", {"input": [call, output]})
        assert kind == "application/json"
        assert json.loads(text)["output"][0]["content"][0]["text"] == "got 2 items"
        kind, text = post(f"{api.url}/responses", {"stream": True, "input": []})
        assert "response.output_text.delta" in [e["type"] for e in sse_events(text)]
        with urllib.request.urlopen(f"{api.url}/models", timeout=10) as response:
            assert json.loads(response.read()) == {"object": "list", "data": []}

        assert api.wait_for_requests(3, timeout=1)
        first, second, third = api.model_requests
        assert (
            first.namespace(NAMESPACE) == ["runner_status"] and third.namespace(NAMESPACE) is None
        )
        assert (
            second.function_call_output("c9") == "ok" and first.function_call_output("c9") is None
        )
        assert len(api.requests) == 4 and "GET /v1/models" in api.summary()
    with pytest.raises(RuntimeError):
        _ = api.url  # a stopped fake has no url


def test_the_readme_gives_the_table_the_test_uses() -> None:
    readme = (REPO / "README.md").read_text()
    assert f"```toml\n{codex_mcp_table()}```" in readme, "README's Codex section differs"
