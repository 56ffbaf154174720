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
import stat
import sys
import termios
import time
from collections import Counter, deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio
import anyio.abc
import anyio.to_thread
from rich.cells import cell_len, set_cell_size
from rich.console import Console, Group, RenderableType
from rich.live import Live
from rich.text import Text

from fleetbus.bus.client import Client
from fleetbus.bus.errors import BusError, ConnectionFailed, unwrap_group
from fleetbus.plugins.runner.models import ENDED, PRIORITIES, RunInfo, StatusResult
from fleetbus.plugins.runner.processes import tail
from fleetbus.plugins.runner.runs import duration_text

MIN_WIDTH, MIN_HEIGHT = 60, 15  # below this the view says so instead of drawing
TOPICS = ["runner.*", "channel"]
TICK = 1.0  # elapsed times and output lines advance this often
COALESCE = 0.1  # at most one runner.status fetch per this many seconds
TAIL_BYTES = 4096  # read from the end of a run's log for its last line
TAILED_RUNS = 50  # running runs whose output line is read
LIST_LIMIT = 200  # running and queued runs fetched
RECENT_SCAN = 50  # newest runs scanned for recently ended ones
RECENT = 10  # recently ended runs shown
EVENTS_KEPT = 100
HUB_GONE = "the hub went away; fleetbus top stopped"
SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGWINCH)
KEYS_HELP = "f freeze  u unfreeze  up/down j/k select  K kill  l/Enter log  q quit"

STATUS_STYLE = {
    "running": "green",
    "queued": "yellow",
    "completed": "cyan",
    "failed": "red",
    "blocked": "magenta",
    "cancelled": "dim red",
    "timeout": "red",
}


# -- pure helpers ------------------------------------------------------------------------------
ANSI = re.compile(r"\x1b(?:\[[0-?]*[ -/]*[@-~]|\][^\x07\x1b]*(?:\x07|\x1b\\)?|[@-Z\\-_])")
CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def clean(text: str) -> str:
    """`text` safe to draw on one line: escape sequences and control characters removed."""
    return CONTROL.sub("", ANSI.sub("", text).replace("\t", " ").replace("\n", " "))


def last_line(text: str) -> str:
    """The last non-blank line of some output (what follows its last carriage return: a
    progress bar's latest state), cleaned for the screen."""
    for line in reversed(text.splitlines()):
        shown = clean(line.rsplit("\r", 1)[-1]).strip()
        if shown:
            return shown
    return ""


def read_last_lines(logs: Sequence[tuple[str, str]]) -> dict[str, str]:
    """{run id: the last line of its log} for (run id, log path) pairs; blocking (run it in
    a worker thread). A bounded tail, regular files only: an agent can put a FIFO there."""
    return {run_id: last_line(tail(Path(path), TAIL_BYTES)) for run_id, path in logs}


def is_regular_file(path: str) -> bool:
    """True when `path` is a regular file itself (not a FIFO, nor a link to anything)."""
    try:
        return stat.S_ISREG(os.lstat(path).st_mode)
    except OSError:
        return False


def fit(text: str, width: int) -> str:
    """`text` in exactly `width` cells: cut with an ellipsis, or padded."""
    if width <= 0:
        return ""
    if cell_len(text) > width:
        text = set_cell_size(text, width - 1) + "…"
    return set_cell_size(text, width)


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


# -- what the view shows -----------------------------------------------------------------------
@dataclass
class Event:
    ts: float
    channel: str
    content: str


@dataclass
class Fleet:
    """The view's state: the hub's latest answers, the channel events seen, the selection
    and the note line. Rendering reads only this, so it never waits on the hub."""

    home: str
    status: StatusResult | None = None
    running: list[RunInfo] = field(default_factory=list)
    queued: list[RunInfo] = field(default_factory=list)
    recent: list[RunInfo] = field(default_factory=list)
    output: dict[str, str] = field(default_factory=dict)
    events: deque[Event] = field(default_factory=lambda: deque(maxlen=EVENTS_KEPT))
    selected: str | None = None
    confirm: str | None = None  # the run a kill waits to be confirmed for
    note: str = ""
    note_style: str = ""

    def runs(self) -> list[RunInfo]:
        """Every run listed, in the order shown (and selected)."""
        return [*self.running, *self.queued, *self.recent]

    def set_runs(
        self, running: list[RunInfo], queued: list[RunInfo], recent: list[RunInfo]
    ) -> None:
        """New lists; the selection stays on its run, or on the same row when it left."""
        before = [r.run_id for r in self.runs()]
        index = before.index(self.selected) if self.selected in before else 0
        self.running, self.queued, self.recent = running, queued, recent
        after = [r.run_id for r in self.runs()]
        if self.selected not in after:
            self.selected = after[min(index, len(after) - 1)] if after else None
        listed = set(after)
        self.output = {k: v for k, v in self.output.items() if k in listed}

    def selected_run(self) -> RunInfo | None:
        return next((r for r in self.runs() if r.run_id == self.selected), None)

    def move(self, step: int) -> None:
        ids = [r.run_id for r in self.runs()]
        if not ids:
            self.selected = None
            return
        index = ids.index(self.selected) if self.selected in ids else 0
        self.selected = ids[max(0, min(len(ids) - 1, index + step))]

    def say(self, note: str, style: str = "") -> None:
        self.note, self.note_style = clean(note), style

    def add_event(self, envelope: dict[str, Any]) -> None:
        data = envelope.get("data") or {}
        ts = envelope.get("ts")
        self.events.append(
            Event(
                ts=float(ts) if isinstance(ts, int | float) else time.time(),
                channel=clean(str(data.get("channel", "?"))),
                content=clean(str(data.get("content", ""))),
            )
        )


def too_small(width: int, height: int) -> Text:
    return Text(
        f"terminal too small: {width}x{height}\n"
        f"fleetbus top needs {MIN_WIDTH}x{MIN_HEIGHT}\n"
        "q quits",
        style="bold yellow",
    )


def render(
    fleet: Fleet, width: int, height: int, now: float, *, unicode: bool = True
) -> RenderableType:
    """The whole screen for a `width` x `height` terminal at time `now`."""
    if width < MIN_WIDTH or height < MIN_HEIGHT:
        return too_small(width, height)
    status = fleet.status
    lanes = list(status.lanes.items()) if status else []
    backoff = list(status.backoff.items())[:2] if status else []
    # header, lanes title, queue line, runs header, events title, note, keys
    rest = height - 7 - len(backoff)
    lanes_rows = min(max(1, len(lanes)), max(1, rest // 4))
    events_rows = max(1, rest // 4)
    runs_rows = rest - lanes_rows - events_rows
    lines: list[Text] = [header(fleet, now)]
    lines.append(Text("Lanes", style="bold"))
    lines += lane_lines(lanes, lanes_rows, width, unicode)
    lines.append(queue_line(fleet))
    for pool, why in backoff:
        lines.append(Text(f"  backoff {pool} {clean(why)}", style="yellow"))
    lines += run_lines(fleet, runs_rows, width, now)
    lines.append(Text("Events", style="bold"))
    lines += event_lines(fleet, events_rows)
    lines = lines[: height - 2]
    lines += [Text("") for _ in range(height - 2 - len(lines))]  # the footer at the bottom
    lines.append(Text(fleet.note, style="bold red" if fleet.confirm else fleet.note_style))
    lines.append(Text(KEYS_HELP, style="dim"))
    for line in lines:
        line.no_wrap = True
        line.overflow = "ellipsis"
        line.truncate(width, overflow="ellipsis")
    return Group(*lines)


def header(fleet: Fleet, now: float) -> Text:
    text = Text("fleetbus top  ", style="bold")
    status = fleet.status
    if status is None:
        return text + Text("waiting for the hub", style="dim")
    if status.frozen:
        text.append(" FROZEN ", style="bold white on red")
        text.append("  ")
    else:
        text.append("dispatching", style="green")
        text.append("  ")
    counts = [("running", status.running), ("queued", status.queued)]
    counts.append(("completed", status.completed))
    counts += [
        (name, n)
        for name, n in (
            ("failed", status.failed),
            ("blocked", status.blocked),
            ("cancelled", status.cancelled),
            ("timeout", status.timeout),
        )
        if n
    ]
    text.append(" · ".join(f"{name} {n}" for name, n in counts))
    text.append(f"  {time.strftime('%H:%M:%S', time.localtime(now))}  ", style="dim")
    text.append(fleet.home, style="dim")
    return text


def lane_lines(lanes: list[tuple[str, Any]], rows: int, width: int, unicode: bool) -> list[Text]:
    if not lanes:
        return [Text("  (no lanes)", style="dim")]
    shown = lanes if len(lanes) <= rows else lanes[: max(1, rows - 1)]
    hidden = len(lanes) - len(shown)
    name_width = min(24, max(cell_len(name) for name, _ in shown))
    bar_width = max(10, min(30, width - name_width - 20))
    full, empty = ("█", "░") if unicode else ("#", "-")
    lines = []
    for name, lane in shown:
        line = Text(f"  {fit(clean(name), name_width)} ")
        if lane.limit:
            used = min(lane.running, lane.limit)
            filled = round(bar_width * used / lane.limit)
            share = lane.running / lane.limit
            style = "red" if share >= 1 else "yellow" if share >= 0.75 else "green"
            line.append(full * filled, style=style)
            line.append(empty * (bar_width - filled), style="dim")
            line.append(f" {lane.running}/{lane.limit}")
        else:
            line.append(" " * bar_width)
            line.append(f" {lane.running} (no limit)")
        lines.append(line)
    if hidden and len(lines) < rows:
        lines.append(Text(f"  … {hidden} more lanes", style="dim"))
    elif hidden:
        lines[-1].append(f"  (+{hidden} more lanes)", style="dim")
    return lines


def queue_line(fleet: Fleet) -> Text:
    status = fleet.status
    depth = status.queued if status else 0
    text = Text("Queue ", style="bold")
    if not depth:
        return text + Text("empty", style="dim")
    text.append(f"{depth} waiting", style="yellow")
    reasons = Counter(clean(r.reason) or "?" for r in fleet.queued)
    if reasons:
        why = ", ".join(f"{reason} ({n})" for reason, n in reasons.most_common())
        more = " …" if depth > len(fleet.queued) else ""
        text.append(f": {why}{more}")
    return text


def run_time(run: RunInfo, now: float) -> str:
    if run.status == "running" and run.started_at:
        return duration_text(now - run.started_at)
    if run.status == "queued":
        return duration_text(now - run.created_at)
    if run.started_at and run.ended_at:
        return duration_text(run.ended_at - run.started_at)
    return "-"


def run_detail(fleet: Fleet, run: RunInfo) -> tuple[str, str]:
    """What the last column says about `run`, and its style."""
    if run.status == "running":
        line = fleet.output.get(run.run_id, "")
        return (line, "") if line else ("(no output yet)", "dim")
    if run.status == "queued":
        return clean(run.reason), "yellow"
    parts = [f"exit {run.exit_code}"] if run.exit_code is not None else []
    if run.reason and run.reason != f"exit {run.exit_code}":
        parts.append(clean(run.reason))
    return " · ".join(parts), "dim"


def run_lines(fleet: Fleet, rows: int, width: int, now: float) -> list[Text]:
    """The runs table: a header line and `rows` lines scrolled to keep the selection."""
    runs = fleet.runs()
    run_w, status_w, time_w = 18, 9, 6
    agent_w = max([5, *(cell_len(r.agent) for r in runs)])
    workspace_w = max([9, *(cell_len(r.workspace) for r in runs)])
    room = width - 2 - run_w - status_w - time_w - 5  # marker, fixed columns, gaps
    agent_w = min(agent_w, 12, max(4, room // 6))
    workspace_w = min(workspace_w, 32, max(8, room // 3))
    detail_w = max(1, room - agent_w - workspace_w)

    def row(cells: Sequence[tuple[str, int]]) -> str:
        return " ".join(fit(text, w) for text, w in cells)

    columns = [(run_w, "RUN"), (agent_w, "AGENT"), (workspace_w, "WORKSPACE")]
    columns += [(status_w, "STATUS"), (time_w, "TIME"), (detail_w, "OUTPUT / WHY")]
    title = "  " + row([(name, w) for w, name in columns])
    lines = [Text(title, style="bold")]
    if not runs:
        lines.append(Text("  (no runs yet)", style="dim"))
        return lines
    ids = [r.run_id for r in runs]
    index = ids.index(fleet.selected) if fleet.selected in ids else 0
    start = max(0, min(index - rows // 2, len(runs) - rows))
    for run in runs[start : start + rows]:
        detail, detail_style = run_detail(fleet, run)
        chosen = run.run_id == fleet.selected
        line = Text("> " if chosen else "  ")
        line.append(fit(run.run_id, run_w) + " ")
        line.append(fit(clean(run.agent), agent_w) + " ")
        line.append(fit(clean(run.workspace), workspace_w) + " ")
        line.append(fit(run.status, status_w) + " ", style=STATUS_STYLE.get(run.status, ""))
        line.append(fit(run_time(run, now), time_w) + " ")
        line.append(fit(detail, detail_w), style=detail_style)
        if chosen:
            line.stylize("reverse")
        lines.append(line)
    hidden = len(runs) - rows
    if hidden > 0:
        lines[0].append(f"  ({start + 1}-{min(start + rows, len(runs))} of {len(runs)})", "dim")
    return lines


def event_lines(fleet: Fleet, rows: int) -> list[Text]:
    if not fleet.events:
        return [Text("  (no channel events yet)", style="dim")]
    lines = []
    for event in list(fleet.events)[-rows:]:
        stamp = time.strftime("%H:%M:%S", time.localtime(event.ts))
        line = Text(f"  {stamp} ", style="dim")
        line.append(f"[{event.channel}] ", style="cyan")
        line.append(event.content)
        lines.append(line)
    return lines


# -- the terminal ------------------------------------------------------------------------------
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
