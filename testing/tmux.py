"""Drive an interactive terminal program in a private tmux server, for tests.

    with Tmux(tmp_path / "tmux.sock", env=env) as tmux:
        tmux.start(["claude", "hello"], cwd=project)
        tmux.wait_for_text("Enter to confirm", timeout=20)
        tmux.send_keys("Enter")
        print(tmux.screen())

The server has its own socket (`tmux -S PATH`; keep the path short, a Unix socket path has
about 100 bytes), reads no configuration file, gives the program `env` (plus the TERM, TMUX
and TMUX_PANE tmux sets in a pane), keeps the pane after the program exits (so its last
screen can still be read), and is killed on exit, waiting for the program to end. Waiting
polls the screen: a test never sleeps a fixed time.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Self

from .processes import alive

SESSION = "main"


class TmuxError(RuntimeError):
    pass


def tmux_binary() -> str | None:
    """The tmux on PATH, or None."""
    return shutil.which("tmux")


class Tmux:
    """One private tmux server with one window running one program."""

    def __init__(
        self,
        socket: Path,
        *,
        env: Mapping[str, str],
        width: int = 200,
        height: int = 50,
        binary: str | None = None,
    ) -> None:
        found = binary or tmux_binary()
        if found is None:
            raise TmuxError("tmux is not installed")
        self.binary = found
        self.socket = socket
        # The server and the program get exactly this environment (never an outer tmux's).
        self.env = {k: v for k, v in env.items() if k not in ("TMUX", "TMUX_PANE")}
        self.width = width
        self.height = height
        self.started = False
        self.pid: int | None = None  # the program's pid, once started

    def command(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run a tmux command against this server."""
        proc = subprocess.run(
            [self.binary, "-u", "-S", str(self.socket), "-f", "/dev/null", *args],
            env=self.env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=30,
        )
        if check and proc.returncode != 0:
            raise TmuxError(f"tmux {' '.join(args)}: {proc.stderr.strip() or proc.returncode}")
        return proc

    def start(self, argv: Sequence[str], *, cwd: Path) -> None:
        """Start the server and `argv` in its only pane."""
        self.started = True
        self.command(
            "start-server",
            ";",
            "set-option",
            "-g",
            "remain-on-exit",
            "on",
            ";",
            "set-option",
            "-g",
            "history-limit",
            "5000",
            ";",
            "new-session",
            "-d",
            "-s",
            SESSION,
            "-x",
            str(self.width),
            "-y",
            str(self.height),
            "-c",
            str(cwd),
            "--",
            *argv,
        )
        shown = self.command("display-message", "-p", "-t", SESSION, "#{pane_pid}", check=False)
        with contextlib.suppress(ValueError):
            self.pid = int(shown.stdout.strip())

    def screen(self, *, history: int = 0) -> str:
        """The pane's visible text (plus `history` lines of scrollback), trailing blanks cut."""
        args = ["capture-pane", "-p", "-t", SESSION]
        if history:
            args += ["-S", str(-history)]
        proc = self.command(*args, check=False)
        if proc.returncode != 0:
            return f"(no screen: {proc.stderr.strip()})"
        return "\n".join(line.rstrip() for line in proc.stdout.rstrip().splitlines())

    def exited(self) -> bool:
        """True once the program in the pane has exited."""
        proc = self.command("display-message", "-p", "-t", SESSION, "#{pane_dead}", check=False)
        return proc.returncode != 0 or proc.stdout.strip() == "1"

    def wait_until(self, check: Callable[[str], object], timeout: float) -> str | None:
        """Poll the screen until `check(screen)` is true; the screen then, or None after
        `timeout` seconds or once the program has exited."""
        deadline = time.monotonic() + timeout
        while True:
            exited = self.exited()  # asked first: what it printed before exiting is read next
            screen = self.screen()
            if check(screen):
                return screen
            if exited or time.monotonic() >= deadline:
                return None
            time.sleep(0.05)

    def wait_for_text(self, pattern: str | re.Pattern[str], timeout: float) -> str | None:
        """Poll the screen until it shows `pattern` (a plain string or a regex); the screen
        then, or None after `timeout` seconds or once the program has exited."""
        if isinstance(pattern, re.Pattern):
            return self.wait_until(lambda screen: pattern.search(screen), timeout)
        return self.wait_until(lambda screen: pattern in screen, timeout)

    def send_keys(self, *keys: str) -> None:
        """Send tmux key names (`Enter`, `Escape`, `C-c`, ...)."""
        self.command("send-keys", "-t", SESSION, *keys)

    def resize(self, width: int, height: int) -> None:
        """Resize the window (the program gets SIGWINCH), as a terminal resized by hand."""
        self.command("resize-window", "-t", SESSION, "-x", str(width), "-y", str(height))
        self.width, self.height = width, height

    def type_text(self, text: str) -> None:
        """Type `text` literally (no key names)."""
        self.command("send-keys", "-t", SESSION, "-l", text)

    def kill(self, timeout: float = 10.0) -> None:
        """Kill the server (its program gets SIGHUP) and wait for the program to exit,
        SIGKILLing it after `timeout` seconds; remove the socket."""
        if self.started:
            self.command("kill-server", check=False)
            self.started = False
        if self.pid is not None:
            deadline = time.monotonic() + timeout
            while alive(self.pid) and time.monotonic() < deadline:
                time.sleep(0.02)
            if alive(self.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGKILL)
            self.pid = None
        with contextlib.suppress(FileNotFoundError):
            self.socket.unlink()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.kill()
