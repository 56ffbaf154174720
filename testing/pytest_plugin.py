"""fleetbus's pytest plugin: fixtures for tests of fleetbus and of its plugins.

Enable it in a `conftest.py` (as tox's `tox.pytest` is enabled)::

    pytest_plugins = ["fleetbus.testing.pytest_plugin"]

Fixtures: `home` (a fresh FLEETBUS_HOME; any hub in it is stopped after the test), `env`
(an environment for it that never reads the user's config), `cli` (runs `fleetbus` as a
real subprocess), `anyio_backend` (asyncio). Every test gets a private XDG_CONFIG_HOME and
no FLEETBUS_* variable of the developer's. For the runner, see `fleetbus.testing.runner`
(`runner_hub`, `Watch`, the injected `Clock`).
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from .hub import cli_command, isolated_env, stop_hub


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture
def home() -> Iterator[Path]:
    """A fresh FLEETBUS_HOME (short, so the socket fits in it); any hub in it is stopped after."""
    with tempfile.TemporaryDirectory(prefix="fb-") as tmp:
        path = Path(tmp) / "home"
        try:
            yield path
        finally:
            stop_hub(path)


@pytest.fixture
def env(home: Path) -> dict[str, str]:
    return isolated_env(home)


class CLI:
    """Runs `fleetbus` as a real subprocess with the test's environment."""

    def __init__(self, env: dict[str, str]) -> None:
        self.env = env

    def __call__(
        self, *args: str, input: str | None = None, timeout: float = 60, **env: str
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            cli_command(*args),
            env={**self.env, **env},
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
        )


@pytest.fixture
def cli(env: dict[str, str]) -> CLI:
    return CLI(env)


@pytest.fixture(autouse=True)
def _no_user_config(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """In-process hubs never read the developer's own config or home."""
    for key in list(os.environ):
        if key.startswith("FLEETBUS_"):
            monkeypatch.delenv(key)
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "xdg-config"))
