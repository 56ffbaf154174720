"""Real MCP clients installed from npm (the MCP Inspector CLI, Claude Code, the Codex CLI),
for end-to-end tests.

CI installs the pinned versions into `.npm-tools/` of the project (`INSTALL`); locally a test
whose client is missing is skipped, and under CI (the environment variable CI set) it fails.

    claude = npm_bin("claude", REPO)
    proc = run([str(claude), "mcp", "list"], env, cwd=project)
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import pytest

from .hub import cli_command

__all__ = ["INSTALL", "NPM_PACKAGES", "missing", "npm_bin", "run", "run_status"]

NPM_PACKAGES = (
    "@modelcontextprotocol/inspector@2.12.0",
    "@anthropic-ai/claude-code@2.1.328",
    "@openai/codex@0.169.0",
)
INSTALL = "npm install --prefix .npm-tools " + " ".join(NPM_PACKAGES)
"""The command that installs the clients, run in the project's directory."""


def missing(what: str, hint: str) -> NoReturn:
    """Skip the test because `what` is missing (`hint` says how to get it); fail it under
    CI, which installs everything."""
    message = f"{what} is missing: {hint}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def npm_bin(name: str, root: Path) -> Path:
    """The executable `name` of the clients installed in project `root` (see `missing`)."""
    path = root / ".npm-tools" / "node_modules" / ".bin" / name
    if not path.exists():
        missing(str(path), f"run `{INSTALL}` in {root}")
    return path


def run(
    argv: Sequence[str],
    env: Mapping[str, str],
    *,
    cwd: Path | None = None,
    timeout: float = 60.0,
) -> subprocess.CompletedProcess[str]:
    """Run `argv` to the end with no input, capturing its output as text. On timeout it is
    killed and the result has exit code -1 and "(timed out)" at the end of its stderr."""
    try:
        return subprocess.run(
            list(argv),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as exc:
        out, err = _text(exc.stdout), _text(exc.stderr) + "\n(timed out)"
        return subprocess.CompletedProcess(list(argv), -1, out, err)


def _text(data: str | bytes | None) -> str:
    return data.decode(errors="replace") if isinstance(data, bytes) else data or ""


def run_status(env: Mapping[str, str], run_id: str) -> dict[str, Any] | None:
    """Run `run_id` as the hub of `env` reports it (`fleetbus call runner.status`); None
    when the call fails or does not know the run."""
    params = json.dumps({"run_id": run_id})
    proc = run(cli_command("call", "runner.status", params), env, timeout=30)
    if proc.returncode != 0:
        return None
    try:
        runs = json.loads(proc.stdout).get("runs") or []
    except ValueError:
        return None
    return next((r for r in runs if r.get("run_id") == run_id), None)
