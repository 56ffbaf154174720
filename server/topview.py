"""What `fleetbus top` draws: the fleet's state as the view keeps it (`Fleet`) and the
renderables of each part (header, lanes, queue, runs, events), from the status the hub
answers and the messages it sends; pure functions of that state and the screen's size,
so they are tested without a terminal. `top.py` runs the view: keys, the terminal, the bus.
"""

from __future__ import annotations

import os
import re
import stat
import time
from collections import Counter, deque
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.cells import cell_len, set_cell_size
from rich.console import Group, RenderableType
from rich.text import Text

from fleetbus.plugins.runner.models import RunInfo, StatusResult
from fleetbus.plugins.runner.processes import tail
from fleetbus.plugins.runner.runs import duration_text

MIN_WIDTH, MIN_HEIGHT = 60, 15  # below this the view says so instead of drawing
TAIL_BYTES = 4096  # read from the end of a run's log for its last line
TAILED_RUNS = 50  # running runs whose output line is read
RECENT = 10  # recently ended runs shown
EVENTS_KEPT = 100
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
