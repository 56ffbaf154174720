"""fleetbus's own tests use the fixtures it ships for plugin authors, plus `serve_env`: agents
for `fleetbus serve` tests (`quick`, and `gated`, which waits on an flock the test holds),
and `source_repo`: a real git repository for the agentic tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from fleetbus.testing.gitrepo import make_repo
from fleetbus.testing.processes import reap_runs

pytest_plugins = ["fleetbus.testing.pytest_plugin"]

SERVE_CONFIG = """\
agents:
  quick:
    command: ["sh", "-c", "echo hi", "{prompt}"]
    prompt: arg
    concurrency: 4
  gated:
    command: ["sh", "-c", "flock -s \\"$GATE\\" true; echo done", "{prompt}"]
    prompt: arg
    env: [GATE]
"""


@pytest.fixture
def serve_env(home: Path, env: dict[str, str]) -> Iterator[dict[str, str]]:
    """The test environment with the agents above; runs a failed test left are killed."""
    config = home.parent / "fleetbus.yaml"
    config.write_text(SERVE_CONFIG)
    env["FLEETBUS_CONFIG"] = str(config)
    env["GATE"] = str(home.parent / "gate")
    yield env
    reap_runs(home)


@pytest.fixture
def source_repo(tmp_path: Path) -> Path:
    """A repository `acme/app` on `main` with one commit (README.md, pyproject.toml)."""
    return make_repo(tmp_path / "src" / "acme" / "app")
