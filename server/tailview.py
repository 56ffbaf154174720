"""The readable lines of `fleetbus tail`: one line per event with its sequence number, the
runner's messages that a channel event already says skipped; `--follow` waits for the next
hub and resumes. Stdlib only.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

from fleetbus.bus.blockingclient import BlockingClient
from fleetbus.bus.errors import BusError, ConnectionFailed
from fleetbus.bus.paths import Home

from .fastcli import LISTENING, SUBSCRIBE_TIMEOUT, Tail, connect, echo
from .texts import (
    clean,
    span,
)

RECONNECT_FIRST, RECONNECT_MAX = 0.05, 1.0  # `tail --follow`: the socket poll's backoff


# -- tail --------------------------------------------------------------------------------------
# messages the runner (and fleet mode) also announce as a readable channel event: when the
# subscription gets that channel too, the readable view prints the channel event only
MIRRORED = {
    "runner.run_started": "agent.status",
    "runner.run_completed": "agent.status",
    "runner.queue_drained": "fleet",
    "runner.rate_limit_detected": "fleet",
    "fleet.task_started": "agent.status",
    "fleet.task_ended": "agent.status",
}


def topic_matches(pattern: str, topic: str) -> bool:
    """As the bus matches a subscription's topics: exact, `prefix*`, or `*` for all."""
    if pattern in ("*", ""):
        return True
    return topic.startswith(pattern[:-1]) if pattern.endswith("*") else topic == pattern


class TailView:
    """What `tail` prints of each envelope: its JSON line (`--json`), or one readable line
    with its sequence number; None for one it leaves out (a channel not asked for, or a
    message whose channel event says the same)."""

    def __init__(self, topics: Sequence[str], channels: Sequence[str], as_json: bool) -> None:
        self.topics = list(topics) + (["channel"] if channels else [])
        self.channels = tuple(channels)
        self.as_json = as_json
        self.with_channel = not self.topics or any(topic_matches(p, "channel") for p in self.topics)

    def line(self, env: Mapping[str, Any]) -> str | None:
        topic = env.get("topic")
        data = env.get("data") or {}
        if self.channels and topic == "channel" and data.get("channel") not in self.channels:
            return None
        if self.as_json:
            return json.dumps(env, default=str)
        mirror = MIRRORED.get(str(topic))
        if mirror and self.with_channel and (not self.channels or mirror in self.channels):
            return None
        return event_line(env)


def event_line(env: Mapping[str, Any]) -> str:
    """`#SEQ HH:MM:SS what happened`, on one line."""
    stamp = time.strftime("%H:%M:%S", time.localtime(env.get("ts", time.time())))
    topic = str(env.get("topic"))
    data = env.get("data") or {}
    if topic == "channel":
        text = f"[{data.get('channel')}] {data.get('content')}"
    else:
        readable = READABLE.get(topic)
        try:
            text = readable(data) if readable else f"{topic} {fields(data)}"
        except (KeyError, TypeError, ValueError):
            text = f"{topic} {fields(data)}"
    text = " ⏎ ".join(line.strip() for line in clean(text).strip().splitlines())
    return f"#{env.get('seq')} {stamp} {text}"


def fields(data: Mapping[str, Any]) -> str:
    """`key=value` pairs, a value quoted only when it needs to be."""
    out = []
    for key, value in data.items():
        if value is None or value == {} or value == []:
            continue
        if isinstance(value, str) and value and not any(c.isspace() or c in '"=' for c in value):
            text = value
        else:
            text = json.dumps(value, default=str)
        out.append(f"{key}={text}")
    return " ".join(out)


def _queued(d: Mapping[str, Any]) -> str:
    where = f", #{d['queue_position']} in the queue" if d.get("queue_position") else ""
    return f"{d['agent']} queued {d['workspace']} (run {d['run_id']}{where}): {d['reason']}"


def _completed(d: Mapping[str, Any]) -> str:
    text = f"{d['agent']} finished {d['workspace']} (run {d['run_id']}): {d['status']}"
    if d.get("duration_s") is not None:
        text += f" in {span(d['duration_s'])}"
    if d.get("exit_code") is not None:
        text += f", exit {d['exit_code']}"
    if d.get("reason") and d["reason"] != f"exit {d.get('exit_code')}":
        text += f" ({d['reason']})"
    if d.get("question"):
        text += f": {d['question']}"
    return text


READABLE: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "runner.run_queued": _queued,
    "runner.run_started": lambda d: (
        f"{d['agent']} started {d['workspace']} (run {d['run_id']}, pid {d['pid']})"
    ),
    "runner.run_completed": _completed,
    "runner.queue_drained": lambda d: f"queue drained: {d['started']} started",
    "runner.frozen": lambda d: "dispatch frozen" if d["frozen"] else "dispatch open (unfrozen)",
    "runner.rate_limit_detected": lambda d: (
        f"{d['pool']} backs off until "
        f"{time.strftime('%H:%M', time.gmtime(d['until']))} UTC: {d['reason']}"
    ),
}


def tail(home: Home, env: Mapping[str, str], cmd: Tail) -> int:
    """Print the hub's messages. When the hub goes away: an error (exit 2), or with
    `--follow` wait for the next hub and go on after the last message seen."""
    view = TailView(cmd.topics, cmd.channels, cmd.as_json)
    printed = 0
    since = cmd.since
    pid: int | None = None  # the hub listened to
    seen: int | None = None  # the newest sequence number seen from it
    client = connect(home, env)
    while True:
        try:
            with client:
                hub = int(client.call("hello")["pid"])
                if pid is not None and hub != pid:  # a new hub numbers its messages from 1
                    since, seen = 0, None
                    echo(f"hub {hub} is up: its messages, numbered from 1", err=True)
                elif seen is not None:
                    since = seen
                pid = hub
                params: dict[str, Any] = {"topics": view.topics or None, "buffer": 1024}
                if since is not None:
                    params["since"] = since
                sid = str(
                    client.call("subscribe", params, timeout=SUBSCRIBE_TIMEOUT)["subscription"]
                )
                echo(LISTENING, err=True)
                for envelope in envelopes(client, sid):
                    if isinstance(envelope.get("seq"), int):
                        seen = envelope["seq"]
                    text = view.line(envelope)
                    if text is None:
                        continue
                    echo(text)
                    printed += 1
                    if cmd.limit is not None and printed >= cmd.limit:
                        return 0
        except ConnectionFailed:
            if not cmd.follow:
                raise
        if not cmd.follow:
            raise ConnectionFailed(
                f"the hub of {home.root} went away; `fleetbus tail --follow` waits for the next one"
            )
        echo(f"the hub {pid} went away; waiting for the next one (Ctrl-C to stop)", err=True)
        client = wait_for_hub(home)


def envelopes(client: BlockingClient, sid: str) -> Iterator[dict[str, Any]]:
    for note in client.notifications():
        env = note.get("params", {})
        if str(env.get("subscription")) == sid:
            yield env


def wait_for_hub(home: Home) -> BlockingClient:
    """A connection to the next hub of `home`, polling its socket with a bounded backoff
    (this starts no hub: whoever needs one next does)."""
    delay = RECONNECT_FIRST
    while True:
        try:
            client = BlockingClient.open(home.socket)
        except ConnectionFailed:
            time.sleep(delay)
            delay = min(delay * 2, RECONNECT_MAX)
            continue
        try:
            client.call("hello", timeout=SUBSCRIBE_TIMEOUT)
        except BusError:  # a hub on its way out, or not ready: try again
            client.sock.close()
            time.sleep(delay)
            continue
        return client
