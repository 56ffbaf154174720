"""What the commands for people are (`status`, `logs`, `dispatch`, ... as tuples both CLIs
build), what they talk to (a `Link` to the hub), and the names they share. Stdlib only.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Protocol

from fleetbus.bus.blockingclient import BlockingClient

RUN_STATUSES = ("queued", "running", "completed", "failed", "blocked", "cancelled", "timeout")
ENDED = frozenset(RUN_STATUSES[2:])
TASK_STATUSES = ("pending", "running", "blocked", "completed", "failed", "cancelled", "timeout")
PRIORITIES = ("critical", "high", "medium", "low")
SESSION_MODES = ("queue", "followup", "interrupt")


# -- the commands ------------------------------------------------------------------------------
class Status(NamedTuple):
    agent: str | None = None
    status: str | None = None
    workspace: str | None = None
    limit: int = 20
    as_json: bool = False


class Logs(NamedTuple):
    run_id: str
    follow: bool = False
    as_json: bool = False


class Dispatch(NamedTuple):
    agent: str
    workspace: str
    prompt: tuple[str, ...]
    priority: str | None = None
    mode: str | None = None
    model: str | None = None
    as_json: bool = False


class Kill(NamedTuple):
    run_id: str | None = None
    agent: str | None = None
    workspace: str | None = None
    everything: bool = False
    as_json: bool = False


class Freeze(NamedTuple):
    as_json: bool = False


class Unfreeze(NamedTuple):
    as_json: bool = False


class Tasks(NamedTuple):
    status: str | None = None
    limit: int = 20
    as_json: bool = False


class Task(NamedTuple):
    task_id: str
    as_json: bool = False


class Answer(NamedTuple):
    task_id: str
    text: tuple[str, ...]
    as_json: bool = False


class Actions(NamedTuple):
    exposed: bool = False
    as_json: bool = False


PeopleCommand = (
    Status | Logs | Dispatch | Kill | Freeze | Unfreeze | Tasks | Task | Answer | Actions
)


class Link(Protocol):
    """What the commands need of a hub: perform an action, list the actions."""

    def perform(self, action: str, payload: dict[str, Any]) -> Any: ...

    def actions(self, exposed_only: bool) -> list[dict[str, Any]]: ...


class BlockingLink:
    """A `Link` over the stdlib-only blocking client."""

    def __init__(self, client: BlockingClient) -> None:
        self.client = client

    def perform(self, action: str, payload: dict[str, Any]) -> Any:
        return self.client.call("perform", {"action": action, "input": payload})

    def actions(self, exposed_only: bool) -> list[dict[str, Any]]:
        return list(self.client.call("actions", {"exposed_only": exposed_only}))
