"""The agentic service's action inputs and results, and the messages it publishes."""

from __future__ import annotations

from typing import Any, ClassVar, Literal

from pydantic import BaseModel, ConfigDict, Field

from fleetbus.bus import Message, Query

Priority = Literal["critical", "high", "medium", "low"]
TaskStatus = Literal["pending", "running", "blocked", "completed", "failed", "cancelled", "timeout"]
FINAL = ("completed", "failed", "cancelled", "timeout")
ACTIVE = ("pending", "running")  # a task whose run is queued or running
PRIORITY_RANK: dict[str, int] = {"critical": 0, "high": 1, "medium": 2, "low": 3}
RANK_PRIORITY: dict[int, Priority] = {0: "critical", 1: "high", 2: "medium", 3: "low"}


class DispatchTask(BaseModel):
    model_config = ConfigDict(extra="forbid")

    repo: str = Field(
        description="A local git repository path, or a URL git can clone "
        "(https://, ssh://, file:// or user@host:path)."
    )
    task: str = Field(min_length=1, max_length=200_000, description="What the agent should do.")
    agent: str | None = Field(None, description="The agent; the router picks one when omitted.")
    model: str | None = Field(None, description="Model for the agent; its default when omitted.")
    labels: list[str] = Field(
        default_factory=list, description="Capabilities the agent must have (all of them)."
    )
    priority: Priority = Field("medium", description="critical, high, medium or low.")
    branch: str | None = Field(None, description="Task branch; default agent/<task-slug>.")
    base: str | None = Field(
        None,
        description="Branch the task starts from and merges into; default: the "
        "repository's current branch.",
    )
    max_retries: int | None = Field(
        None, ge=0, le=100, description="Retries after a failed run (default 3), then dead letter."
    )
    idempotency_key: str | None = Field(
        None, min_length=1, max_length=200, description="The same key returns the same task."
    )
    dry_run: bool = Field(
        False, description="Validate, route and build the prompt; create nothing."
    )


class DispatchedTask(BaseModel):
    task_id: str
    workspace: str
    branch: str
    agent: str
    status: TaskStatus
    reason: str = Field(description="Why it waits or was refused, in words; empty when running.")
    run_id: str | None = None
    prompt: str | None = Field(None, description="The prompt (dry_run only).")


class TaskQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task_id: str | None = Field(None, description="Only this task.")
    workspace: str | None = Field(None, description="Only the task of this workspace.")
    status: TaskStatus | None = Field(None, description="Only tasks with this status.")
    limit: int = Field(20, ge=0, le=500, description="How many of the newest tasks to list.")


class TaskRun(BaseModel):
    run_id: str
    attempt: int
    status: str
    exit_code: int | None
    started_at: float | None
    ended_at: float | None
    prompt_sha256: str
    tokens: int | None = None
    cost_usd: float | None = None


class TaskInfo(BaseModel):
    task_id: str
    repo: str
    task: str
    agent: str
    model: str | None
    labels: list[str]
    priority: Priority
    status: TaskStatus
    reason: str
    workspace: str
    path: str | None = Field(description="The workspace directory; null once cleaned up.")
    branch: str
    base: str
    retries: int
    max_retries: int
    next_attempt_at: float | None
    question: str | None
    answer: str | None
    progress: str | None
    tokens: int
    cost_usd: float
    commits_ahead: int | None = Field(description="Commits on the branch not in base.")
    files_changed: list[str] = Field(description="Files the branch changed against base.")
    uncommitted: list[str] = Field(description="Files changed but not committed.")
    log_tail: str = Field(description="The end of the latest run's output.")
    created_at: float
    ended_at: float | None
    merged: str | None = Field(description="The merge commit or strategy, once merged.")
    runs: list[TaskRun]


class FinishedTasks(Query):
    """Tasks that reached an end after `since` (epoch seconds), oldest end first."""

    since: float = 0.0
    limit: int = 1000


class TaskList(BaseModel):
    tasks: list[TaskInfo]
    counts: dict[str, int] = Field(description="Tasks by status, all of them.")


class ResumeTask(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task_id: str = Field(description="A blocked task.")
    answer: str = Field(min_length=1, max_length=100_000, description="The answer to its question.")


class TaskRef(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task_id: str = Field(description="The task.")


class TaskState(BaseModel):
    task_id: str
    status: TaskStatus
    reason: str
    run_id: str | None = None


class DiffQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task_id: str = Field(description="The task.")
    stat_only: bool = Field(False, description="Files and line counts only, no patch.")


class FileStat(BaseModel):
    path: str
    added: int | None
    removed: int | None


class DiffResult(BaseModel):
    task_id: str
    branch: str
    base: str
    commits: list[dict[str, str]]
    files: list[FileStat]
    patch: str
    truncated: bool
    note: str


class MergeTask(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task_id: str = Field(description="A task whose branch has commits.")
    strategy: Literal["ff", "merge", "squash"] = Field(
        "merge", description="ff (fast-forward only), merge (a merge commit) or squash."
    )


class MergeResult(BaseModel):
    task_id: str
    base: str
    branch: str
    strategy: str
    commit: str


class CleanupInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    task_id: str | None = Field(None, description="Clean up this finished task only.")
    older_than_days: float | None = Field(
        None, ge=0, description="Finished tasks that ended more than this many days ago."
    )


class Cleaned(BaseModel):
    task_id: str
    workspace: str
    removed: bool
    salvaged: str | None = Field(description="Branch holding the uncommitted work, if any.")
    reason: str


class CleanupResult(BaseModel):
    cleaned: list[Cleaned]
    bytes_freed: int


class Report(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_id: str = Field(min_length=1, max_length=100, description="$FLEETBUS_RUN_ID of the run.")
    kind: Literal["progress", "question", "done"] = Field(description="What is reported.")
    text: str = Field(min_length=1, max_length=65536, description="The report, in words.")


class Reported(BaseModel):
    task_id: str
    kind: str


# -- messages -------------------------------------------------------------------------------
class TaskEvent(Message):
    task_id: str
    agent: str = ""
    reason: str = ""
    payload: dict[str, Any] = {}


class TaskDispatched(TaskEvent):
    topic: ClassVar[str] = "agentic.task_dispatched"


class TaskClaimed(TaskEvent):
    topic: ClassVar[str] = "agentic.task_claimed"


class DispatchFailedNoAgent(TaskEvent):
    topic: ClassVar[str] = "agentic.dispatch_failed_no_agent"


class DispatchFailedQuota(TaskEvent):
    topic: ClassVar[str] = "agentic.dispatch_failed_quota"


class QuotaWarning(TaskEvent):
    topic: ClassVar[str] = "agentic.quota_warning"


class QuotaExceeded(TaskEvent):
    topic: ClassVar[str] = "agentic.quota_exceeded"


class UsageRecorded(TaskEvent):
    topic: ClassVar[str] = "agentic.usage_recorded"


class RetryScheduled(TaskEvent):
    """A run failed; the task runs again at `payload["next_attempt"]` (retry n of max)."""

    topic: ClassVar[str] = "agentic.retry_scheduled"


class TaskDeadLettered(TaskEvent):
    topic: ClassVar[str] = "agentic.task_dead_lettered"


class TaskEnded(TaskEvent):
    """A task reached completed, blocked, failed (for good), cancelled or timeout."""

    topic: ClassVar[str] = "agentic.task_ended"
    status: str = ""
