"""The HTTP token file `$FLEETBUS_HOME/token`: made 0600, kept 0600, never read unbounded.

A token file that others may read is made 0600 before it is used, with a warning (the
first test runs `fleetbus serve --http` as a real process and uses the token); one that is
not a regular file or is empty is refused with a clear message. Real files, no mocks.
"""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import httpx2
import pytest

from fleetbus.bus.errors import StartupError
from fleetbus.bus.paths import Home
from fleetbus.server.serve import load_token
from fleetbus.testing.serving import serve_http

TOKEN = "a-token-the-user-wrote-by-hand-0123456789"
INITIALIZE = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-11-25",
        "capabilities": {},
        "clientInfo": {"name": "token-test", "version": "0"},
    },
}
HEADERS = {"Accept": "application/json, text/event-stream", "Content-Type": "application/json"}


def token_file(home: Path, text: str, mode: int) -> Path:
    Home(home).ensure()
    path = home / "token"
    path.write_text(text)
    path.chmod(mode)
    return path


def mode_of(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_a_world_readable_token_file_is_made_private_and_used(
    home: Path, env: dict[str, str]
) -> None:
    path = token_file(home, TOKEN + "\n", 0o644)
    with serve_http(env) as served:
        log = "".join(served.stderr)
        assert f"the token file {path} had mode 0644" in log, log
        assert "made it 0600" in log
        assert mode_of(path) == 0o600
        assert path.read_text() == TOKEN + "\n"  # the user's token, kept
        with httpx2.Client(timeout=20) as http:
            denied = http.post(served.url, json=INITIALIZE, headers=HEADERS)
            assert denied.status_code == 401
            allowed = http.post(
                served.url,
                json=INITIALIZE,
                headers={**HEADERS, "Authorization": f"Bearer {TOKEN}"},
            )
            assert allowed.status_code == 200, allowed.text


def test_load_token_fixes_group_bits_and_logs_it(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = token_file(home, f"  {TOKEN}  \n", 0o640)
    with caplog.at_level(logging.WARNING, logger="fleetbus.serve"):
        assert load_token(Home(home), {}) == TOKEN
    assert mode_of(path) == 0o600
    assert "had mode 0640" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="fleetbus.serve"):
        assert load_token(Home(home), {}) == TOKEN  # already private: nothing to say
    assert caplog.text == ""


def test_a_new_token_file_is_private(home: Path) -> None:
    token = load_token(Home(home), {})
    assert len(token) >= 20
    assert mode_of(home / "token") == 0o600
    assert load_token(Home(home), {}) == token


def test_a_fifo_or_empty_token_file_is_refused_clearly(home: Path) -> None:
    Home(home).ensure()
    path = home / "token"
    os.mkfifo(path, 0o600)
    with pytest.raises(StartupError, match="is not a regular file; remove it"):
        load_token(Home(home), {})  # returns at once: a FIFO is never opened for reading
    path.unlink()
    token_file(home, "\n", 0o600)
    with pytest.raises(StartupError, match="is empty; remove it"):
        load_token(Home(home), {})


def test_a_huge_token_file_is_read_bounded(home: Path) -> None:
    token_file(home, "t" * (5 * 1024 * 1024), 0o600)
    assert len(load_token(Home(home), {})) <= 4096


def test_fleetbus_token_wins_over_the_file(home: Path) -> None:
    path = token_file(home, TOKEN, 0o644)
    assert load_token(Home(home), {"FLEETBUS_TOKEN": "from-env"}) == "from-env"
    assert mode_of(path) == 0o644  # not touched when not used
