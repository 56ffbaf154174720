"""testing.processes: when a killed process counts as gone."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from fleetbus.testing.processes import alive, wait_for

# a process like a hub: a listening Unix socket and busy threads writing to disk
BUSY_LISTENER = """
import os, socket, sys, threading
server = socket.socket(socket.AF_UNIX)
server.bind(sys.argv[1])
server.listen(16)

def work(n):
    fd = os.open(f"{sys.argv[1]}.{n}", os.O_WRONLY | os.O_CREAT)
    while True:
        os.write(fd, b"x" * 65536)
        os.fsync(fd)

for n in range(8):
    threading.Thread(target=work, args=(n,), daemon=True).start()
print("ready", flush=True)
threading.Event().wait()
"""


@pytest.mark.parametrize("attempt", range(5))
def test_a_killed_process_is_gone_only_once_its_files_are_closed(
    tmp_path: Path, attempt: int
) -> None:
    # SIGKILL turns the main thread into a zombie while the other threads still exit,
    # holding the process's files: a hub's socket then still accepts connections
    path = tmp_path / "s"
    with subprocess.Popen(
        [sys.executable, "-c", BUSY_LISTENER, str(path)], stdout=subprocess.PIPE
    ) as proc:
        try:
            assert proc.stdout is not None and proc.stdout.readline() == b"ready\n"
            os.kill(proc.pid, signal.SIGKILL)
            assert wait_for(lambda: not alive(proc.pid), 30)
            with socket.socket(socket.AF_UNIX) as client, pytest.raises(ConnectionRefusedError):
                client.connect(str(path))
        finally:
            proc.kill()
