"""`fleetbus logs RUN_ID [-f]`: a run's output, read from its log as a regular file only
(never through a symbolic link), its end followed while the run runs. Stdlib only.
"""

from __future__ import annotations

import codecs
import os
import stat
import sys
import time
from collections.abc import Mapping
from typing import Any

from fleetbus.bus.errors import Refused

from .commands import (
    ENDED,
    Link,
    Logs,
)
from .fastcli import UsageError, echo, json_text
from .texts import (
    clean,
    terminal_width,
)

LOG_BYTES = 4 * 1024 * 1024  # the most of a log `logs` prints: its end
FOLLOW_POLL = 0.1  # seconds between reads of a followed log
FOLLOW_STATUS = 0.25  # seconds between asking the hub whether a followed run ended


# -- logs --------------------------------------------------------------------------------------
def one_run(link: Link, run_id: str) -> dict[str, Any]:
    runs = link.perform("runner.status", {"run_id": run_id, "limit": 1})["runs"]
    if not runs:
        raise Refused(f"no run {run_id!r}: `fleetbus status` lists the runs")
    return dict(runs[0])


class LogFile:
    """A run's log, read as a regular file only: no symlink is followed (neither the file
    nor its directory), so a log replaced by a link cannot show another file."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None
        self.offset = 0

    def open(self) -> bool:
        """True once the file is open; False while it does not exist yet."""
        if self.fd is not None:
            return True
        folder, name = os.path.split(self.path)
        nofollow = os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | nofollow)
        except FileNotFoundError:
            return False
        except OSError as e:
            raise Refused(f"cannot read the log {self.path}: {e.strerror}") from None
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NONBLOCK | nofollow, dir_fd=dir_fd)
        except FileNotFoundError:
            return False
        except OSError as e:
            raise Refused(f"cannot read the log {self.path}: {e.strerror}") from None
        finally:
            os.close(dir_fd)
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            raise Refused(f"the log {self.path} is not a regular file: not read")
        self.fd = fd
        return True

    def start_at_tail(self, limit: int) -> int:
        """Skip all but the last `limit` bytes; how many were skipped."""
        assert self.fd is not None
        size = os.fstat(self.fd).st_size
        self.offset = max(0, size - limit)
        return self.offset

    def read(self, most: int = 1 << 20) -> bytes:
        """What was written since the last read (at most `most` bytes)."""
        if self.fd is None:
            return b""
        if os.fstat(self.fd).st_size < self.offset:  # truncated: from the start again
            self.offset = 0
        data = os.pread(self.fd, most, self.offset)
        self.offset += len(data)
        return data

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class Output:
    """Log bytes to stdout: unchanged into a pipe, cleaned of control sequences on a
    terminal (decoded across chunk boundaries)."""

    def __init__(self) -> None:
        self.tty = terminal_width() is not None
        self.decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def write(self, data: bytes, final: bool = False) -> None:
        if not data and not final:
            return
        if self.tty:
            sys.stdout.write(clean(self.decoder.decode(data, final)))
            sys.stdout.flush()
        else:
            sys.stdout.buffer.write(data)
            sys.stdout.buffer.flush()


def logs(link: Link, cmd: Logs) -> int:
    if cmd.follow and cmd.as_json:
        raise UsageError("fleetbus logs: --json prints the log once; leave out -f (or --json)")
    run = one_run(link, cmd.run_id)
    log = LogFile(run["log"]) if run.get("log") else None
    try:
        if not cmd.follow:
            return print_log(run, log, cmd.as_json)
        return follow_log(link, run, log)
    finally:
        if log is not None:
            log.close()


def print_log(run: Mapping[str, Any], log: LogFile | None, as_json: bool) -> int:
    data, skipped = b"", 0
    if log is not None and log.open():
        skipped = log.start_at_tail(LOG_BYTES)
        data = log.read(LOG_BYTES)
    if as_json:
        text = data.decode("utf-8", "replace")
        echo(json_text({"run": run, "output": text, "skipped_bytes": skipped}))
        return 0
    if skipped:
        echo(f"(the first {skipped:,} bytes are left out; the whole log: {run['log']})", err=True)
    out = Output()
    out.write(data, final=True)
    if log is None or log.fd is None:
        what = "it left no output" if run["status"] in ENDED else "no output yet"
        echo(f"run {run['run_id']} is {run['status']}: {what}", err=True)
    return 0


def follow_log(link: Link, run: dict[str, Any], log: LogFile | None) -> int:
    """Print the log as it grows; return once the run has ended and all of it is out
    (a queued run's log appears when it starts)."""
    out = Output()
    next_check = 0.0
    try:
        while True:
            if log is None and run.get("log"):
                log = LogFile(run["log"])
            if log is not None and log.fd is None and log.open():
                skipped = log.start_at_tail(LOG_BYTES)
                if skipped:
                    echo(f"(the first {skipped:,} bytes are left out: {run['log']})", err=True)
            data = log.read() if log is not None else b""
            out.write(data)
            if run["status"] in ENDED and not data:
                out.write(b"", final=True)
                break
            now = time.monotonic()
            if run["status"] not in ENDED and now >= next_check:
                run = one_run(link, run["run_id"])  # ended: the next reads take the rest
                next_check = now + FOLLOW_STATUS
            elif not data:
                time.sleep(FOLLOW_POLL)
    finally:
        if log is not None:
            log.close()
    code = run.get("exit_code")
    echo(
        f"run {run['run_id']} {run['status']}{f', exit {code}' if code is not None else ''}",
        err=True,
    )
    return 0
