"""The fleet plugin's action results, the task it puts on the queue, and its messages."""

from __future__ import annotations

import json
from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from fleetbus.bus import Message
from fleetbus.plugins.agentic.models import DispatchTask
from fleetbus.plugins.runner.models import DispatchInput

TERMINAL = frozenset({"completed", "failed", "blocked", "cancelled", "timeout", "dead_lettered"})


class Routed(BaseModel):
    """What every task on the queue carries: its id and where it came from."""

    model_config = ConfigDict(extra="forbid")

    task_id: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    origin_node: str = Field(pattern=r"^[A-Za-z0-9_-]{1,64}$")
    origin: dict[str, str] = Field(default_factory=dict)
    created_at: float


class FleetTask(DispatchInput, Routed):
    """A run as it travels on the queue: the runner's input plus where it came from."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["run"] = "run"

    @property
    def agent_name(self) -> str:
        return self.agent


class FleetAgenticTask(Routed):
    """An agentic task (a repository, labels, retries) as it travels on the queue; the hub
    that takes it runs `agentic.dispatch` (which picks its agent)."""

    kind: Literal["task"]
    request: DispatchTask
    lane: str = Field(pattern=r"^tasks-(any|at-[A-Za-z0-9_-]{1,64})$")

    @property
    def agent_name(self) -> str:
        return self.request.agent or ""

    @property
    def priority(self) -> str:
        return self.request.priority


AnyTask = FleetTask | FleetAgenticTask


def parse_task(data: bytes | str) -> AnyTask:
    """The task in a queue message; ValueError (pydantic's, or JSON's) when it is not one."""
    raw = json.loads(data)
    if isinstance(raw, dict) and raw.get("kind") == "task":
        return FleetAgenticTask.model_validate(raw)
    return FleetTask.model_validate(raw)


class FleetDispatchResult(BaseModel):
    task_id: str
    status: str = Field(description="queued: it waits on the fleet's queue for a free hub.")
    reason: str


class NodeInfo(BaseModel):
    node: str
    version: str
    agents: list[str]
    capabilities: dict[str, list[str]] = Field(
        default_factory=dict, description="Each agent's capabilities (for routing by labels)."
    )
    lanes: dict[str, str] = Field(description="Running/limit per lane, as `2/4`.")
    running: int
    queued: int
    fleet_running: int = Field(description="Fleet tasks running on this node.")
    last_seen: float
    lost: bool = Field(description="No heartbeat for three intervals.")


class FleetStatus(BaseModel):
    configured: bool = Field(description="Whether fleet.url is set; without it the hub is alone.")
    connected: bool
    node: str
    note: str = Field(description="What the fleet plugin is doing, in words.")
    nodes: list[NodeInfo]
    lost: list[str] = Field(description="Nodes that stopped sending heartbeats.")
    depth: dict[str, dict[str, int]] = Field(
        description="Tasks waiting on the fleet's queue, per agent and priority."
    )
    running_here: int = Field(description="Fleet tasks this hub runs now.")
    following: bool = Field(
        False, description="Someone here (fleetbus tail) reads the other hubs' messages."
    )
    mirroring: bool = Field(
        False, description="This hub sends its run messages to a hub that follows the fleet."
    )


class FleetTaskInfo(BaseModel):
    task_id: str
    agent: str
    workspace: str
    priority: str
    status: str
    node: str | None = Field(description="The hub that ran (or runs) it.")
    run_id: str | None
    delivery: int | None = Field(description="Which delivery of the task won (1: first try).")
    exit_code: int | None
    reason: str
    created_at: float
    ended_at: float | None


class TasksQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    status: str | None = Field(None, description="Only tasks with this status.")
    limit: int = Field(100, ge=1, le=10000, description="How many, newest first.")


class RecordsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(50, ge=1, le=1000, description="How many, newest first.")


class FleetTasks(BaseModel):
    tasks: list[FleetTaskInfo]


class AuditRecord(BaseModel):
    what: str = Field(description="refused (not a dispatch), late (superseded), dead_lettered.")
    task_id: str | None
    detail: str
    at: float


class FleetRecords(BaseModel):
    records: list[AuditRecord]


class FleetTaskEvent(Message):
    task_id: str
    agent: str
    workspace: str
    node: str
    run_id: str | None = None
    delivery: int | None = None


class FleetTaskStarted(FleetTaskEvent):
    topic: ClassVar[str] = "fleet.task_started"


class FleetTaskEnded(FleetTaskEvent):
    topic: ClassVar[str] = "fleet.task_ended"
    status: str
    exit_code: int | None = None
    reason: str = ""


class FleetRemote(Message):
    """A message published on another hub of the fleet (for `fleetbus tail`)."""

    topic: ClassVar[str] = "fleet.remote"
    node: str
    remote_topic: str
    data: dict[str, Any]
