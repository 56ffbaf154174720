"""`fleetbus top`: a live terminal view of the fleet, for the person who runs it.

It shows the lanes as bars (running/limit), the queue (its depth and why runs wait), the
runs (running ones with their elapsed time and the last line of their output, then queued
and recently ended ones) and the latest channel events, drawn with rich's `Live` on the
alternate screen.

The view follows the bus: it subscribes to `runner.*` and `channel` and fetches
`runner.status` again when a runner message arrives (a burst costs one fetch). A
one-second tick only advances elapsed times and re-reads the running runs' output lines
(bounded tails, regular files only, in a worker thread). A freeze made by another client
arrives as `runner.frozen`.

Keys come from stdin in cbreak mode (no echo, no line editing, no signals from keys): f
freeze, u unfreeze, up/down or j/k select, K then y kill, l or Enter open the log in
$PAGER (default less), q quit, Ctrl-C quit (exit 130). The terminal is restored on every
exit; when the hub goes away the view ends with `ConnectionFailed`, which the CLI reports
on stderr (exit 2).
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import signal
import sys
import termios
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
from rich.console import Console
from rich.live import Live

from fleetbus.bus.client import Client
from fleetbus.bus.errors import BusError, ConnectionFailed, unwrap_group
from fleetbus.plugins.runner.models import ENDED, PRIORITIES, StatusResult

from .topview import (
    RECENT,
    TAILED_RUNS,
    Fleet,
    clean,
    is_regular_file,
    read_last_lines,
    render,
)

TOPICS = ["runner.*", "channel"]
TICK = 1.0  # elapsed times and output lines advance this often
COALESCE = 0.1  # at most one runner.status fetch per this many seconds
LIST_LIMIT = 200  # running and queued runs fetched
RECENT_SCAN = 50  # newest runs scanned for recently ended ones
HUB_GONE = "the hub went away; fleetbus top stopped"
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGWINCH)


CSI_KEYS = {
    "A": "up",
    "B": "down",
    "C": "right",
    "D": "left",
    "H": "home",
    "F": "end",
    "1~": "home",
    "4~": "end",
    "5~": "pageup",
    "6~": "pagedown",
}
CONTROL_KEYS = {"\r": "enter", "\n": "enter", "\x03": "ctrl-c", "\x0c": "ctrl-l", "\x1b": "escape"}
SEQUENCE = re.compile(r"\x1b(?:\[([0-9;]*[~A-Za-z])|O([A-Za-z]))")


def parse_keys(data: bytes) -> list[str]:
    """Key names in what the terminal sent: `up`, `down`, `enter`, `ctrl-c`, ... or the
    character typed; escape sequences this view has no use for are `unknown`."""
    text = data.decode(errors="ignore")
    keys: list[str] = []
    i = 0
    while i < len(text):
        match = SEQUENCE.match(text, i)
        if match:
            code = match.group(1) or match.group(2)
            keys.append(CSI_KEYS.get(code, "unknown"))
            i = match.end()
            continue
        keys.append(CONTROL_KEYS.get(text[i], text[i]))
        i += 1
    return keys


def terminal_problem() -> str | None:
    """Why the view cannot run here, in words; None when stdin and stdout are a terminal
    it can draw on."""
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        return "fleetbus top needs a terminal: run it with stdin and stdout on one"
    if os.environ.get("TERM", "") in ("", "dumb", "unknown"):
        return "fleetbus top needs a terminal that can draw: TERM is not set (or dumb)"
    return None


def cbreak(fd: int, saved: list[Any]) -> None:
    """Keys one at a time: no echo, no line editing, no signals or flow control from keys
    (Ctrl-C arrives as a key), output processing kept (rich writes plain newlines)."""
    mode = list(saved)
    mode[0] &= ~(termios.IXON | termios.ICRNL | termios.INLCR | termios.IGNCR)
    mode[3] &= ~(termios.ICANON | termios.ECHO | termios.ISIG | termios.IEXTEN)
    mode[6] = list(saved[6])
    mode[6][termios.VMIN] = 1
    mode[6][termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, mode)


def restore(fd: int, saved: list[Any]) -> None:
    with contextlib.suppress(termios.error, OSError):  # a terminal that hung up
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


class Top:
    """The running view: tasks for the bus, the keys, the signals and the tick, one `Live`."""

    def __init__(self, client: Client, home: str, *, fd: int, console: Console) -> None:
        self.client = client
        self.fleet = Fleet(home=home)
        self.fd = fd
        self.console = console
        self.unicode = console.encoding.lower().startswith("utf")
        self.live: Live | None = None
        self.paused = False  # a pager has the terminal
        self.saved: list[Any] = []
        self.done = anyio.Event()
        self.exit_code = 0
        self.failure: BusError | None = None
        self.tg: anyio.abc.TaskGroup | None = None
        self.wanted = anyio.Event()  # a runner.status fetch is due

    async def run(self) -> int:
        async with self.client.subscribe(TOPICS, since=0) as messages:
            await self.refresh()  # errors here are plain: the terminal is untouched yet
            await self.read_outputs()
            with (
                anyio.open_signal_receiver(*SIGNALS) as signals,
                self.terminal(),
                unwrap_group(),
            ):
                async with anyio.create_task_group() as tg:
                    self.tg = tg
                    tg.start_soon(self.guarded, self.watch_bus, messages)
                    tg.start_soon(self.guarded, self.refresher)
                    tg.start_soon(self.guarded, self.ticker)
                    tg.start_soon(self.guarded, self.read_keys)
                    tg.start_soon(self.watch_signals, signals)
                    await self.done.wait()
                    tg.cancel_scope.cancel()
        if self.failure is not None:
            raise self.failure
        return self.exit_code

    def finish(self, code: int = 0, failure: BusError | None = None) -> None:
        if not self.done.is_set():
            self.exit_code, self.failure = code, failure
            self.done.set()

    async def guarded(self, task: Callable[..., Awaitable[None]], *args: Any) -> None:
        """Run one of the view's tasks; the hub going away or refusing ends the view."""
        try:
            await task(*args)
        except ConnectionFailed:
            self.finish(failure=ConnectionFailed(HUB_GONE))
        except BusError as e:
            self.finish(failure=e)

    # -- the screen ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def terminal(self) -> Iterator[None]:
        """Cbreak mode and the alternate screen for the block; both undone on any exit."""
        self.saved = termios.tcgetattr(self.fd)
        try:
            cbreak(self.fd, self.saved)
            self.start_live()
            yield
        finally:
            self.stop_live()
            restore(self.fd, self.saved)

    def start_live(self) -> None:
        self.live = Live(
            console=self.console,
            screen=True,
            auto_refresh=False,
            redirect_stdout=False,
            redirect_stderr=False,
        )
        self.live.start()
        self.redraw()

    def stop_live(self) -> None:
        live, self.live = self.live, None
        if live is not None:
            with contextlib.suppress(OSError):  # a terminal that hung up
                live.stop()

    def redraw(self, *, clear: bool = False) -> None:
        if self.paused or self.live is None:
            return
        with contextlib.suppress(OSError):
            # asked each time (not $COLUMNS/$LINES, which a resize leaves stale)
            width, height = os.get_terminal_size(self.console.file.fileno())
            self.console.size = (width, height)
            view = render(self.fleet, width, height, time.time(), unicode=self.unicode)
            if clear:
                self.console.clear()
            self.live.update(view, refresh=True)

    @contextlib.asynccontextmanager
    async def suspended(self) -> AsyncIterator[None]:
        """The terminal as it was before the view, for a pager; the view back after."""
        self.paused = True
        self.stop_live()
        restore(self.fd, self.saved)
        try:
            yield
        finally:
            cbreak(self.fd, self.saved)
            self.paused = False
            self.start_live()

    # -- the hub -------------------------------------------------------------------------------
    async def status(self, **query: Any) -> StatusResult:
        return StatusResult.model_validate(await self.client.perform("runner.status", query))

    async def refresh(self) -> None:
        """Fetch the counts, lanes and runs again (the running and queued runs only when
        there are any)."""
        overall = await self.status(limit=RECENT_SCAN)
        running = (await self.status(status="running", limit=LIST_LIMIT)).runs
        queued = (
            (await self.status(status="queued", limit=LIST_LIMIT)).runs if overall.queued else []
        )
        running.sort(key=lambda r: (r.started_at or r.created_at, r.run_id))
        queued.sort(key=lambda r: (PRIORITIES[r.priority], r.created_at, r.run_id))
        recent = [r for r in overall.runs if r.status in ENDED]
        recent.sort(key=lambda r: r.ended_at or r.created_at, reverse=True)
        self.fleet.status = overall
        self.fleet.set_runs(running, queued, recent[:RECENT])

    async def read_outputs(self) -> None:
        logs = [(r.run_id, r.log) for r in self.fleet.running[:TAILED_RUNS] if r.log]
        if logs:
            self.fleet.output.update(await anyio.to_thread.run_sync(read_last_lines, logs))

    async def watch_bus(self, messages: AsyncIterator[dict[str, Any]]) -> None:
        async for envelope in messages:
            topic = str(envelope.get("topic", ""))
            if topic == "channel":
                self.fleet.add_event(envelope)
                self.redraw()
            elif topic.startswith("runner."):
                self.wanted.set()
        raise ConnectionFailed(HUB_GONE)  # the subscription ends only with the connection

    async def refresher(self) -> None:
        while True:
            await self.wanted.wait()
            self.wanted = anyio.Event()
            await self.refresh()
            await self.read_outputs()
            self.redraw()
            await anyio.sleep(COALESCE)

    async def ticker(self) -> None:
        while True:
            await anyio.sleep(TICK)
            await self.read_outputs()
            self.redraw()

    async def perform(
        self, action: str, payload: dict[str, Any], said: Callable[[dict[str, Any]], str]
    ) -> None:
        """Perform an action for a key; its result or its refusal goes on the note line."""
        try:
            result = await self.client.perform(action, payload)
        except ConnectionFailed:
            raise
        except BusError as e:
            self.fleet.say(e.message, "red")
        else:
            if self.fleet.status is not None and "frozen" in result:
                self.fleet.status.frozen = bool(result["frozen"])
            self.fleet.say(said(result), "green")
            self.wanted.set()
        self.redraw()

    def act(
        self, action: str, payload: dict[str, Any], said: Callable[[dict[str, Any]], str]
    ) -> None:
        """Start an action without holding up the keys."""
        if self.tg is not None:
            self.tg.start_soon(self.guarded, self.perform, action, payload, said)

    # -- keys and signals ----------------------------------------------------------------------
    async def read_keys(self) -> None:
        while True:
            await anyio.wait_readable(self.fd)
            try:
                data = os.read(self.fd, 1024)
            except OSError:
                data = b""
            if not data:  # the terminal is gone
                self.finish(128 + signal.SIGHUP)
                return
            for key in parse_keys(data):
                await self.on_key(key)
                if self.done.is_set():
                    return

    async def on_key(self, key: str) -> None:
        fleet = self.fleet
        if fleet.confirm is not None:
            run_id, fleet.confirm = fleet.confirm, None
            if key in ("y", "Y"):
                fleet.say(f"killing run {run_id}…")
                self.act("runner.kill", {"run_id": run_id}, lambda r: killed(run_id, r))
            else:
                fleet.say(f"run {run_id} not killed")
        elif key == "q":
            self.finish(0)
        elif key == "ctrl-c":
            self.finish(130)
        elif key == "f":
            self.act("runner.stop", {}, lambda r: "dispatch frozen: nothing new starts (u resumes)")
        elif key == "u":
            self.act("runner.start", {}, lambda r: "dispatch resumed")
        elif key in ("up", "k"):
            fleet.move(-1)
        elif key in ("down", "j"):
            fleet.move(1)
        elif key in ("pageup", "pagedown"):
            fleet.move((-1 if key == "pageup" else 1) * max(1, self.console.size.height // 3))
        elif key in ("home", "g"):
            fleet.move(-len(fleet.runs()))
        elif key in ("end", "G"):
            fleet.move(len(fleet.runs()))
        elif key == "K":
            self.ask_kill()
        elif key in ("l", "enter"):
            await self.open_log()
        elif key == "ctrl-l":
            self.redraw(clear=True)
            return
        else:
            return
        self.redraw()

    def ask_kill(self) -> None:
        run = self.fleet.selected_run()
        if run is None:
            self.fleet.say("no run selected", "yellow")
        elif run.status not in ("running", "queued"):
            self.fleet.say(f"run {run.run_id} has already ended ({run.status})", "yellow")
        else:
            self.fleet.confirm = run.run_id
            self.fleet.say(
                f"kill run {run.run_id} ({clean(run.agent)} in {clean(run.workspace)})? "
                "y kills it, any other key keeps it"
            )

    async def open_log(self) -> None:
        """The selected run's log in $PAGER (default less); the view comes back after."""
        run = self.fleet.selected_run()
        if run is None:
            self.fleet.say("no run selected", "yellow")
            return
        if not run.log or not await anyio.to_thread.run_sync(is_regular_file, run.log):
            self.fleet.say(f"run {run.run_id} has no log file (yet)", "yellow")
            return
        pager = os.environ.get("PAGER") or "less"
        try:
            argv = shlex.split(pager)
        except ValueError:
            argv = []
        if not argv:
            self.fleet.say(f"$PAGER is not a command: {pager!r}", "red")
            return
        async with self.suspended():
            try:
                done = await anyio.run_process(
                    [*argv, run.log], stdin=None, stdout=None, stderr=None, check=False
                )
            except OSError as e:
                self.fleet.say(f"cannot start the pager {argv[0]}: {e.strerror or e}", "red")
            else:
                if done.returncode:
                    self.fleet.say(f"the pager {argv[0]} exited {done.returncode}", "yellow")
                else:
                    self.fleet.say("")

    async def watch_signals(self, signals: AsyncIterator[int]) -> None:
        async for signum in signals:
            if signum == signal.SIGWINCH:
                self.redraw(clear=True)
            elif signum == signal.SIGINT and self.paused:
                continue  # Ctrl-C in the pager is the pager's
            else:
                self.finish(128 + signum)


def killed(run_id: str, result: dict[str, Any]) -> str:
    if result.get("killed"):
        return f"run {run_id} killed"
    if result.get("cancelled"):
        return f"run {run_id} cancelled"
    return f"run {run_id} had already ended"


async def run_top(client: Client, home: Path) -> int:
    """Show the view until q (exit 0) or Ctrl-C (130); raises ConnectionFailed when the
    hub goes away, with the terminal already restored."""
    console = Console(highlight=False)
    return await Top(client, str(home), fd=sys.stdin.fileno(), console=console).run()
