"""The runner's inputs, outputs, messages and query, as pydantic models.

Declarations only: no I/O, no state.
"""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from fleetbus.bus import Message, Query

Priority = Literal["critical", "high", "medium", "low"]
SessionMode = Literal["queue", "followup", "interrupt"]
RunStatus = Literal["queued", "running", "completed", "failed", "blocked", "cancelled", "timeout"]
PRIORITIES: dict[str, int] = {"critical": 0, "high": 1, "medium": 2, "low": 3}
PRIORITY_NAMES = {v: k for k, v in PRIORITIES.items()}
ENDED = ("completed", "failed", "blocked", "cancelled", "timeout")


class DispatchInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent: str = Field(
        description="Agent from the manifest: codex, claude, gemini, shell, fake or your own."
    )
    prompt: str = Field(description="The task for the agent (at most dispatch.max_prompt_bytes).")
    workspace: str = Field(
        description="Workspace name such as core/app/fix-login: a directory under "
        "dispatch.workspace_root, created when missing."
    )
    model: str | None = Field(None, description="Model for the agent; its default when omitted.")
    priority: Priority = Field("medium", description="Queue order: critical, high, medium or low.")
    session_mode: SessionMode | None = Field(
        None,
        description="When the workspace already has an active run: queue (wait), followup "
        "(run after it, with its context) or interrupt (cancel it and start this one). "
        "Default: dispatch.session.mode.",
    )
    timeout_minutes: float | None = Field(
        None, gt=0, le=24 * 60, description="Kill the run after this long; default: the agent's."
    )
    idempotency_key: str | None = Field(
        None, min_length=1, max_length=200, description="The same key returns the same run."
    )


class DispatchResult(BaseModel):
    run_id: str
    status: RunStatus
    reason: str = Field(
        description="Why it is queued or was refused, in words; empty when running, except "
        "for a followup with no earlier run in its workspace, which starts without context."
    )
    queue_position: int | None = Field(
        None, description="1-based place among all queued runs, when queued."
    )


class StatusInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_id: str | None = Field(None, description="Only this run.")
    workspace: str | None = Field(None, description="Only runs of this workspace.")
    status: RunStatus | None = Field(None, description="Only runs with this status.")
    agent: str | None = Field(None, description="Only runs of this agent.")
    limit: int = Field(
        20, ge=0, le=1000, description="How many of the newest matching runs to list."
    )


class RunInfo(BaseModel):
    run_id: str
    workspace: str
    agent: str
    model: str | None
    priority: Priority
    status: RunStatus
    reason: str
    pid: int | None
    created_at: float
    started_at: float | None
    ended_at: float | None
    exit_code: int | None
    log: str | None
    usage: dict[str, Any] | None = None
    question: str | None = Field(
        None, description="The question the run left (.fleetbus/question.md), at most 64 KiB."
    )
    previous_run_id: str | None = Field(
        None, description="A followup: the run whose context it was given."
    )


class LaneInfo(BaseModel):
    running: int
    limit: int | None
    installed: bool | None = Field(
        None, description="Whether the agent's program is on the hub's PATH (total: null)."
    )


class StatusResult(BaseModel):
    running: int
    queued: int
    completed: int
    failed: int
    blocked: int
    cancelled: int
    timeout: int
    total: int
    frozen: bool
    lanes: dict[str, LaneInfo]
    backoff: dict[str, str] = Field(
        default_factory=dict, description="Pools backed off, with until when and why."
    )
    runs: list[RunInfo]


class KillInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_id: str | None = Field(None, description="Kill only this run.")
    agent: str | None = Field(None, description="Kill only this agent's runs.")
    workspace: str | None = Field(
        None, description="Kill this workspace's active run and cancel its waiting prompts."
    )


class KillResult(BaseModel):
    killed: int = Field(description="Running processes terminated.")
    cancelled: int = Field(description="Queued runs cancelled.")
    frozen: bool


class StateResult(BaseModel):
    frozen: bool
    running: int
    queued: int


# -- messages -------------------------------------------------------------------------------
class RunEvent(Message):
    run_id: str
    workspace: str
    agent: str
    model: str | None = None


class RunQueued(RunEvent):
    topic: ClassVar[str] = "runner.run_queued"
    reason: str
    queue_position: int | None = None


class RunStarted(RunEvent):
    topic: ClassVar[str] = "runner.run_started"
    pid: int


class RunCompleted(RunEvent):
    topic: ClassVar[str] = "runner.run_completed"
    status: str
    exit_code: int | None
    duration_s: float | None
    reason: str = ""
    usage: dict[str, Any] | None = None
    question: str | None = None  # blocked: what the agent asked (at most 64 KiB)


class DispatchFrozen(Message):
    """Dispatch was frozen (`runner.stop`, or a kill of everything) or unfrozen
    (`runner.start`): views redraw on it."""

    topic: ClassVar[str] = "runner.frozen"
    frozen: bool


class QueueDrained(Message):
    topic: ClassVar[str] = "runner.queue_drained"
    started: int


class RateLimitDetected(Message):
    topic: ClassVar[str] = "runner.rate_limit_detected"
    pool: str
    until: float
    reason: str


class WorkspaceQuery(Query):
    """Workspaces by name or by the status of their newest run."""

    name: str | None = None
    status: RunStatus | None = None


class FreeSlots(Query):
    """How many more runs of `agent` (and `model`) could start here now: lanes, the total,
    the pool's backoff and rate, frozen state and the runs already queued for it all
    count. For services that feed the runner from elsewhere (fleet mode pulls only this
    many); an agent this hub does not have answers 0."""

    agent: str
    model: str | None = None


class FinishedRuns(Query):
    """Runs that ended after `since` (epoch seconds), oldest end first: for services that
    report finished work (sync) and catch up after a restart."""

    since: float = 0.0
    limit: int = 1000


class WorkspaceInfo(BaseModel):
    name: str
    path: str
    status: str
    run_id: str | None
    agent: str | None
