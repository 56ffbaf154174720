"""Commands for the person at the terminal: `status`, `logs`, `dispatch`, `kill`, `freeze`,
`unfreeze`, `tasks`, `task`, `answer`, `actions`, and the readable lines of `tail`.

Stdlib only, like `call` (fastcli.py): each runs in a new process and makes a request or
two, so it must start fast. fastcli's parser builds these commands and runs them over the
blocking client; the click definitions in cli.py build the same tuples and run the same
code (`--embedded` too, through a `Link` to the in-process hub), so both CLIs print the
same. Output is for people: relative times, tables fitted to a terminal but never cut when
stdout is a pipe; `--json` prints the hub's answer unchanged, for scripts.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from fleetbus.bus.errors import Refused

from .commands import (
    ENDED,
    PRIORITIES,
    RUN_STATUSES,
    SESSION_MODES,
    TASK_STATUSES,
    Actions,
    Answer,
    BlockingLink,
    Dispatch,
    Freeze,
    Kill,
    Link,
    Logs,
    PeopleCommand,
    Status,
    Task,
    Tasks,
    Unfreeze,
)
from .fastcli import UsageError, echo, json_text
from .runlogs import (
    logs,
    one_run,
)
from .tailview import (
    TailView,
    tail,
)
from .texts import (
    ago,
    clean,
    money,
    one_line,
    plural,
    span,
    table,
    terminal_width,
    tokens_of,
    wrapped,
)

__all__ = [  # what both CLIs use: the commands, their names and their texts
    "ENDED",
    "PRIORITIES",
    "RUN_STATUSES",
    "SESSION_MODES",
    "TASK_STATUSES",
    "Actions",
    "Answer",
    "BlockingLink",
    "Dispatch",
    "Freeze",
    "Kill",
    "Link",
    "Logs",
    "PeopleCommand",
    "Status",
    "TailView",
    "Task",
    "Tasks",
    "Unfreeze",
    "ago",
    "clean",
    "execute",
    "span",
    "table",
    "tail",
]


def execute(link: Link, cmd: PeopleCommand) -> int:
    """Run a command against the hub; its exit status (errors are raised: BusError,
    UsageError)."""
    run: Callable[[Link, Any], int] = COMMANDS[type(cmd)]
    return run(link, cmd)


# -- status ------------------------------------------------------------------------------------
def run_when(run: Mapping[str, Any], now: float) -> str:
    started, ended = run.get("started_at"), run.get("ended_at")
    if run["status"] == "queued":
        return f"queued {span(now - run['created_at'])}"
    if ended is None:
        return f"running {span(now - (started or run['created_at']))}"
    took = f" (took {span(ended - started)})" if started else ""
    return f"{ago(now - ended)}{took}"


def run_note(run: Mapping[str, Any]) -> str:
    """Why a run waits or ended as it did (a blocked run's question is shown under it)."""
    if run["status"] in ("running", "blocked"):
        return ""
    reason = one_line(run.get("reason") or "")
    return "" if reason == f"exit {run.get('exit_code')}" else reason


def run_rows(runs: Sequence[Mapping[str, Any]], now: float) -> list[list[str]]:
    rows = []
    for r in runs:
        usage = r.get("usage") or {}
        tokens = tokens_of(usage)
        agent = r["agent"] + (f":{r['model']}" if r.get("model") else "")
        rows.append(
            [
                r["run_id"],
                one_line(agent),
                one_line(r["workspace"]),
                r["status"],
                run_when(r, now),
                "" if r.get("exit_code") is None else str(r["exit_code"]),
                "" if tokens is None else f"{tokens:,}",
                money(usage.get("cost_usd")),
                run_note(r),
            ]
        )
    return rows


def status_header(state: Mapping[str, Any]) -> str:
    """Frozen or not, and each pool that backs off, until when and why."""
    head = (
        "dispatch FROZEN: running runs go on, nothing new starts (fleetbus unfreeze)"
        if state["frozen"]
        else "dispatch open"
    )
    backoff = state.get("backoff") or {}
    if not backoff:
        return f"{head}; no pool backs off"
    return head + "; " + "; ".join(f"{p} backs off {one_line(w)}" for p, w in backoff.items())


def counts_line(counts: Mapping[str, Any], statuses: Sequence[str], what: str) -> str:
    parts = [f"{counts[s]} {s}" for s in statuses if counts.get(s)]
    total = sum(int(counts.get(s) or 0) for s in statuses)
    return f"{what}: {', '.join(parts) if parts else 'none'} ({total} in all)"


def lane_rows(lanes: Mapping[str, Mapping[str, Any]], with_runs: set[str]) -> list[list[str]]:
    """The lanes worth showing: the total, and agents installed (on the hub's PATH, as the
    hub says) or with runs."""
    rows = []
    for name, lane in lanes.items():
        agent = name.split(":", 1)[0]
        shown = (
            name == "total"
            or lane.get("running")
            or agent in with_runs
            or lane.get("installed") is not False  # a hub too old to say: shown
        )
        if shown:
            limit = lane.get("limit")
            rows.append([name, f"{lane['running']}/{limit if limit is not None else '-'}"])
    return rows


def queue_line(queued: int, waiting: Sequence[Mapping[str, Any]]) -> str:
    if not queued:
        return "queue: empty"
    reasons: dict[str, int] = {}
    for run in waiting:
        why = one_line(run.get("reason") or "waiting")
        reasons[why] = reasons.get(why, 0) + 1
    why = ", ".join(f"{n} {r}" for r, n in sorted(reasons.items(), key=lambda x: -x[1]))
    more = queued - len(waiting)
    if more > 0:
        why += f"{', ' if why else ''}{more} more"
    return f"queue: {queued} waiting: {why}"


def status(link: Link, cmd: Status) -> int:
    filters = {
        k: v
        for k, v in (("agent", cmd.agent), ("status", cmd.status), ("workspace", cmd.workspace))
        if v is not None
    }
    listed = link.perform("runner.status", {**filters, "limit": cmd.limit})
    if cmd.as_json:
        echo(json_text(listed))
        return 0
    whole = link.perform("runner.status", {"limit": 0}) if filters else listed
    waiting: list[dict[str, Any]] = []
    if whole["queued"]:
        waiting = link.perform("runner.status", {"status": "queued", "limit": 1000})["runs"]
    runs = listed["runs"]
    width = terminal_width()
    now = time.time()
    with_runs = {r["agent"] for r in (*runs, *waiting)}
    lines = [status_header(whole), counts_line(whole, RUN_STATUSES, "runs"), ""]
    lines += table(["lane", "running"], lane_rows(whole["lanes"], with_runs), width)
    lines += ["", queue_line(whole["queued"], waiting), ""]
    if not runs:
        lines.append(
            "no runs match" if filters else "no runs yet: fleetbus dispatch AGENT WORKSPACE PROMPT"
        )
    else:
        header = ["run", "agent", "workspace", "status", "when", "exit", "tokens", "cost", "note"]
        rows = table(header, run_rows(runs, now), width, flexible=(8, 2, 1))
        lines.append(rows[0])
        for run, line in zip(runs, rows[1:], strict=True):
            lines.append(line)
            if run.get("question"):
                lines += wrapped("question", run["question"], width)
        if listed["total"] > len(runs):
            lines.append(f"(the newest {len(runs)} of {listed['total']}: --limit shows more)")
    echo("\n".join(lines))
    return 0


# -- dispatch, kill, freeze ----------------------------------------------------------------------
def dispatch(link: Link, cmd: Dispatch) -> int:
    prompt = sys.stdin.read() if cmd.prompt == ("-",) else " ".join(cmd.prompt)
    payload: dict[str, Any] = {"agent": cmd.agent, "workspace": cmd.workspace, "prompt": prompt}
    for key, value in (
        ("priority", cmd.priority),
        ("session_mode", cmd.mode),
        ("model", cmd.model),
    ):
        if value is not None:
            payload[key] = value
    result = link.perform("runner.dispatch", payload)
    if cmd.as_json:
        echo(json_text(result))
        return 0
    line = f"run {result['run_id']} {result['status']}"
    if result["status"] == "queued" and result.get("queue_position"):
        line += f" (#{result['queue_position']} in the queue)"
    line += f": {one_line(cmd.agent)} in {one_line(cmd.workspace)}"
    if result.get("reason"):
        line += f", {one_line(result['reason'])}"
    echo(line)
    return 0


def kill(link: Link, cmd: Kill) -> int:
    chosen = [
        name
        for name, given in (
            ("RUN_ID", cmd.run_id is not None),
            ("--agent", cmd.agent is not None),
            ("--workspace", cmd.workspace is not None),
            ("--all", cmd.everything),
        )
        if given
    ]
    if len(chosen) != 1:
        got = f"got {' and '.join(chosen)}" if chosen else "got none"
        raise UsageError(
            f"fleetbus kill: give exactly one of RUN_ID, --agent A, --workspace W or --all ({got})"
        )
    payload: dict[str, Any] = {}
    before: list[dict[str, Any]] = []
    if cmd.run_id is not None:
        run = one_run(link, cmd.run_id)
        if run["status"] in ENDED:
            raise Refused(f"run {cmd.run_id} already ended ({run['status']}): nothing to kill")
        payload["run_id"] = cmd.run_id
        before = [run]
    else:
        if cmd.agent is not None:
            payload["agent"] = cmd.agent
        if cmd.workspace is not None:
            payload["workspace"] = cmd.workspace
        for state in ("running", "queued"):
            before += link.perform("runner.status", {**payload, "status": state, "limit": 1000})[
                "runs"
            ]
    result = link.perform("runner.kill", payload)
    if cmd.as_json:
        echo(json_text(result))
        return 0
    lines = []
    for n, state, verb in (
        (result["killed"], "running", "killed"),
        (result["cancelled"], "queued", "cancelled"),
    ):
        if n:
            ids = [r["run_id"] for r in before if r["status"] == state]
            names = f": {', '.join(ids)}" if len(ids) == n else ""
            lines.append(f"{verb} {plural(n, f'{state} run')}{names}")
    if not lines:
        whose = {"agent": f" of agent {cmd.agent}", "workspace": f" in {cmd.workspace}"}
        which = "".join(whose[k] for k in payload if k in whose)
        lines.append(f"nothing to kill: no run{which} is running or queued")
    if cmd.everything and result.get("frozen"):
        lines.append("dispatch is frozen now: fleetbus unfreeze starts the queue again")
    echo("\n".join(lines))
    return 0


def freeze(link: Link, cmd: Freeze) -> int:
    result = link.perform("runner.stop", {})
    if cmd.as_json:
        echo(json_text(result))
        return 0
    echo(
        f"dispatch frozen: {result['running']} running go on, {result['queued']} queued wait; "
        "nothing new starts until fleetbus unfreeze"
    )
    return 0


def unfreeze(link: Link, cmd: Unfreeze) -> int:
    result = link.perform("runner.start", {})
    if cmd.as_json:
        echo(json_text(result))
        return 0
    echo(f"dispatch open: {result['running']} running, {result['queued']} queued")
    return 0


# -- agentic tasks -----------------------------------------------------------------------------
def task_when(task: Mapping[str, Any], now: float) -> str:
    runs = task.get("runs") or []
    latest = runs[-1] if runs else {}
    if task["status"] == "pending":
        return f"pending {span(now - task['created_at'])}"
    if task["status"] == "running":
        return f"running {span(now - (latest.get('started_at') or task['created_at']))}"
    ended = task.get("ended_at") or latest.get("ended_at")
    return ago(now - ended) if ended else ""


def tasks(link: Link, cmd: Tasks) -> int:
    payload: dict[str, Any] = {"limit": cmd.limit}
    if cmd.status is not None:
        payload["status"] = cmd.status
    result = link.perform("agentic.status", payload)
    if cmd.as_json:
        echo(json_text(result))
        return 0
    width = terminal_width()
    now = time.time()
    items = result["tasks"]
    lines = [counts_line(result.get("counts") or {}, TASK_STATUSES, "tasks")]
    if not items:
        lines.append("no tasks match" if cmd.status else "no tasks yet")
        echo("\n".join(lines))
        return 0
    header = ["task", "status", "agent", "branch", "runs", "when", "tokens", "cost", "what"]
    rows = [
        [
            t["task_id"],
            t["status"],
            one_line(t["agent"]),
            one_line(t["branch"]),
            str(len(t.get("runs") or [])),
            task_when(t, now),
            f"{t['tokens']:,}" if t.get("tokens") else "",
            money(t.get("cost_usd")) if t.get("cost_usd") else "",
            one_line((clean(t["task"]).strip().splitlines() or [""])[0]),
        ]
        for t in items
    ]
    out = table(header, rows, width, flexible=(8, 3))
    lines.append(out[0])
    for t, line in zip(items, out[1:], strict=True):
        lines.append(line)
        if t["status"] == "blocked" and t.get("question"):
            lines += wrapped("question", t["question"], width)
    if any(t["status"] == "blocked" for t in items):
        lines.append("answer a blocked task: fleetbus answer TASK_ID TEXT")
    echo("\n".join(lines))
    return 0


def task(link: Link, cmd: Task) -> int:
    found = link.perform("agentic.status", {"task_id": cmd.task_id, "limit": 1})["tasks"]
    if not found:
        raise Refused(f"no task {cmd.task_id!r}: `fleetbus tasks` lists the tasks")
    t = found[0]
    if cmd.as_json:
        echo(json_text(t))
        return 0
    echo("\n".join(task_detail(t, time.time(), terminal_width())))
    return 0


def task_detail(t: Mapping[str, Any], now: float, width: int | None) -> list[str]:
    model = f":{t['model']}" if t.get("model") else ""
    lines = [f"task {t['task_id']}: {t['status']}, {t['agent']}{model}, priority {t['priority']}"]
    if t.get("reason"):
        lines += wrapped("reason", t["reason"], width, indent="  ", align=10)
    lines += wrapped("task", t["task"], width, indent="  ", align=10)
    lines += [
        f"  repo:      {one_line(t['repo'])}",
        f"  branch:    {one_line(t['branch'])} (from {one_line(t['base'])})",
        f"  workspace: {one_line(t['workspace'])}"
        + (f" ({one_line(t['path'])})" if t.get("path") else " (cleaned up)"),
    ]
    if t.get("commits_ahead") is not None:
        changed = ", ".join(one_line(f) for f in t.get("files_changed") or []) or "none"
        lines.append(f"  commits:   {t['commits_ahead']} ahead; files changed: {changed}")
    if t.get("uncommitted"):
        lines.append(f"  uncommitted: {', '.join(one_line(f) for f in t['uncommitted'])}")
    lines.append(
        f"  created {ago(now - t['created_at'])}"
        + (f", ended {ago(now - t['ended_at'])}" if t.get("ended_at") else "")
        + f"; retries {t['retries']}/{t['max_retries']}"
        + (f"; {t['tokens']:,} tokens" if t.get("tokens") else "")
        + (f", {money(t['cost_usd'])}" if t.get("cost_usd") else "")
    )
    if t.get("merged"):
        lines.append(f"  merged:    {one_line(t['merged'])}")
    for label in ("progress", "question", "answer"):
        if t.get(label):
            lines += wrapped(label, t[label], width, indent="  ", align=10)
    if t.get("runs"):
        lines.append("  runs:")
        rows = [
            [
                f"#{r['attempt']}",
                r["run_id"],
                r["status"],
                "" if r.get("exit_code") is None else f"exit {r['exit_code']}",
                attempt_when(r, now),
                f"{r['tokens']:,} tokens" if r.get("tokens") else "",
                money(r.get("cost_usd")) if r.get("cost_usd") else "",
            ]
            for r in t["runs"]
        ]
        lines += [
            "    " + line
            for line in table(["", "run", "status", "", "when", "", ""], rows, None)[1:]
        ]
    if t.get("log_tail"):
        lines.append("  output (the end):")
        lines += ["    " + line.rstrip() for line in clean(t["log_tail"]).rstrip().splitlines()]
    if t["status"] == "blocked":
        lines.append(f"answer it: fleetbus answer {t['task_id']} TEXT")
    return lines


def attempt_when(run: Mapping[str, Any], now: float) -> str:
    started, ended = run.get("started_at"), run.get("ended_at")
    if not started:
        return ""
    return f"{ago(now - ended)} (took {span(ended - started)})" if ended else span(now - started)


def answer(link: Link, cmd: Answer) -> int:
    text = sys.stdin.read() if cmd.text == ("-",) else " ".join(cmd.text)
    result = link.perform("agentic.resume", {"task_id": cmd.task_id, "answer": text})
    if cmd.as_json:
        echo(json_text(result))
        return 0
    line = f"task {result['task_id']} resumed: {result['status']}"
    if result.get("run_id"):
        line += f", run {result['run_id']}"
    if result.get("reason"):
        line += f" ({one_line(result['reason'])})"
    echo(line)
    return 0


# -- actions -----------------------------------------------------------------------------------
def actions(link: Link, cmd: Actions) -> int:
    items = link.actions(cmd.exposed)
    if cmd.as_json:
        echo(json_text(items))
        return 0
    width = terminal_width()
    rows = [
        [
            a["name"],
            a["plugin"],
            ",".join(f for f in ("exposed", "mutating", "destructive") if a.get(f)) or "-",
            one_line(a.get("description") or ""),
        ]
        for a in items
    ]
    header = ["action", "plugin", "flags", "description"]
    if width is None:  # whole descriptions, one action a line
        echo("\n".join(table(header, rows, None)))
        return 0
    import textwrap

    # on a terminal the description wraps in its column: every word of it is shown
    lead = [max(len(r[i]) for r in [header, *rows]) for i in range(3)]
    indent = sum(lead) + 2 * 3
    room = max(width - indent, 30)
    lines = []
    for row in [header, *rows]:
        first = "  ".join(cell.ljust(lead[i]) for i, cell in enumerate(row[:3])) + "  "
        parts = textwrap.wrap(row[3], room) or [""]
        lines.append((first + parts[0]).rstrip())
        lines += [" " * indent + p for p in parts[1:]]
    echo("\n".join(lines))
    return 0


COMMANDS: dict[type, Callable[[Link, Any], int]] = {
    Status: status,
    Logs: logs,
    Dispatch: dispatch,
    Kill: kill,
    Freeze: freeze,
    Unfreeze: unfreeze,
    Tasks: tasks,
    Task: task,
    Answer: answer,
    Actions: actions,
}
