"""`fleetbus serve --http` as a real subprocess for tests: on a free port of 127.0.0.1,
yielded once it listens (its log says so), stopped (by its pid) after.

with serve_http(env) as served:
    httpx.get(served.url, headers={"Authorization": f"Bearer {token}"})
"""

from __future__ import annotations

import queue
import re
import signal
import socket
import subprocess
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from .hub import cli_command


def free_port() -> int:
    """A TCP port of 127.0.0.1 nothing listens on now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@dataclass
class Served:
    proc: subprocess.Popen[str]
    port: int
    token: str = ""
    stderr: list[str] = field(default_factory=list)  # its log lines so far

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        """The MCP endpoint."""
        return f"{self.base}/mcp"


@contextmanager
def serve_http(env: dict[str, str], *args: str, timeout: float = 30) -> Iterator[Served]:
    """`fleetbus serve --http --port N ARGS`, yielded once it listens (the MCP endpoint and
    the dashboard: its last start-up line); stopped after."""
    port = free_port()
    proc = subprocess.Popen(
        cli_command("serve", "--http", "--port", str(port), *args),
        env={**env, "FLEETBUS_LOG_LEVEL": "INFO"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    served = Served(proc, port)
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            served.stderr.append(line)
            lines.put(line)
        lines.put(None)

    reader = threading.Thread(target=pump, daemon=True)
    reader.start()
    try:
        ready = re.compile(rf"dashboard on http://127\.0\.0\.1:{port}/")
        while True:
            try:
                line = lines.get(timeout=timeout)
            except queue.Empty:
                raise AssertionError(
                    f"`fleetbus serve --http` not ready in {timeout}s:\n{''.join(served.stderr)}"
                ) from None
            if line is None:
                raise AssertionError(
                    f"`fleetbus serve --http` exited {proc.wait()}:\n{''.join(served.stderr)}"
                )
            if ready.search(line):
                break
        yield served
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        reader.join(10)
        if proc.stderr is not None:
            proc.stderr.close()
