"""Real MCP clients from npm against `fleetbus serve` (stdio): the MCP Inspector CLI and
Claude Code. CI installs them into `.npm-tools/` (see `.ci/run`); locally the tests are
skipped when they are missing, and fail under CI.

Both clients pass their environment to the server, so FLEETBUS_HOME/FLEETBUS_CONFIG reach
it; HOME is a temporary directory, so the user's own configuration is never touched. The
hub the server starts is stopped by the `home` fixture.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from fleetbus.testing.clients import npm_bin, run
from fleetbus.testing.processes import wait_for

REPO = Path(__file__).resolve().parents[2]
TOOLS = {
    "runner_dispatch",
    "runner_status",
    "runner_stop",
    "runner_start",
    "runner_kill",
    "runner_poke",
    "fleetbus_watch",
}
SERVE = [sys.executable, "-m", "fleetbus.server", "serve"]


@pytest.fixture
def client_env(home: Path, env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    """The test's fleetbus environment, with a throwaway HOME and no Claude credentials
    or config directory of the user's."""
    user_home = tmp_path / "user-home"
    user_home.mkdir()
    out = {
        k: v
        for k, v in env.items()
        if not k.startswith(("ANTHROPIC_", "CLAUDE_")) and k != "MCP_TIMEOUT"
    }
    out.update(
        HOME=str(user_home),
        DISABLE_AUTOUPDATER="1",
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC="1",
    )
    return out


def inspector_env(env: dict[str, str]) -> list[str]:
    """The Inspector (2.x) gives the server only the variables passed with -e."""
    return [arg for k, v in env.items() if k.startswith("FLEETBUS_") for arg in ("-e", f"{k}={v}")]


def the_server_used(home: Path) -> None:
    """The server ran with the test's FLEETBUS_HOME: the hub it started has its database
    there (the relay answers the handshake and tools/list without waiting for the hub)."""
    assert wait_for((home / "fleetbus.db").exists, 30), (
        f"no hub ran in {home}: the env did not reach it"
    )


# -- MCP Inspector (CLI mode) -----------------------------------------------------------------
def test_inspector_lists_the_tools(home: Path, client_env: dict[str, str]) -> None:
    inspector = npm_bin("mcp-inspector", REPO)
    proc = run(
        [str(inspector), "--cli", *inspector_env(client_env), *SERVE, "--method", "tools/list"],
        client_env,
    )
    assert proc.returncode == 0, proc.stderr
    tools = {t["name"]: t for t in json.loads(proc.stdout)["tools"]}
    assert set(tools) >= TOOLS, sorted(tools)
    assert tools["runner_dispatch"]["inputSchema"]["type"] == "object"
    assert {"agent", "prompt", "workspace"} <= set(
        tools["runner_dispatch"]["inputSchema"]["required"]
    )
    the_server_used(home)


def test_inspector_calls_runner_status(home: Path, client_env: dict[str, str]) -> None:
    inspector = npm_bin("mcp-inspector", REPO)
    proc = run(
        [
            str(inspector),
            "--cli",
            *inspector_env(client_env),
            *SERVE,
            "--method",
            "tools/call",
            "--tool-name",
            "runner_status",
            "--tool-arg",
            "limit=1",
        ],
        client_env,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result.get("isError") is False, result
    content = result["structuredContent"]
    assert content["running"] == 0 and content["queued"] == 0, content
    assert content["runs"] == [], content
    the_server_used(home)


# -- Claude Code ------------------------------------------------------------------------------
def test_claude_code_connects(home: Path, client_env: dict[str, str], tmp_path: Path) -> None:
    claude = npm_bin("claude", REPO)
    project = tmp_path / "project"
    project.mkdir()
    added = run([str(claude), "mcp", "add", "fleetbus", "--", *SERVE], client_env, cwd=project)
    assert added.returncode == 0, added.stdout + added.stderr
    assert (Path(client_env["HOME"]) / ".claude.json").exists(), "claude wrote its config elsewhere"

    listed = run([str(claude), "mcp", "list"], client_env, cwd=project)
    assert listed.returncode == 0, listed.stdout + listed.stderr
    line = next((ln for ln in listed.stdout.splitlines() if ln.startswith("fleetbus")), "")
    assert "Connected" in line, listed.stdout + listed.stderr
    the_server_used(home)
