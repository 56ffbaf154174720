"""The runner's configuration: the `agents` and `dispatch` manifest sections.

`AGENTS` (agents by name, see agents.py) and `DISPATCH` (workspace root, global limits,
session queues, the failure breaker) are registered by the runner's `register_config`
hook and read with `hub.config[AGENTS]` / `hub.config[DISPATCH]`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fleetbus.bus.config import ConfigSection

from .agents import AgentName, AgentRates, AgentSpec, UsageReading, UsageSpec

__all__ = [
    "AGENTS",
    "DISPATCH",
    "AgentName",
    "AgentRates",
    "AgentSpec",
    "BreakerSpec",
    "DispatchSpec",
    "SessionSpec",
    "UsageReading",
    "UsageSpec",
]


class SessionSpec(BaseModel):
    """How a workspace's session queue treats a prompt that arrives while a run is active."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["queue", "followup", "interrupt"] = Field(
        "queue",
        description="Default session_mode: queue (wait), followup (run after it, with its "
        "context) or interrupt (cancel the active run and start the new one).",
    )
    cap: int = Field(10, ge=1, description="Most prompts waiting in one workspace's queue.")
    drop: Literal["old", "new"] = Field(
        "old",
        description="When the queue is full: drop the oldest waiting prompt, or refuse the new one.",
    )
    debounce_ms: int = Field(
        800,
        ge=0,
        description="Prompts that arrive within this many milliseconds of each other while "
        "the workspace is busy are merged into one run.",
    )
    max_concurrent: int = Field(1, ge=1, description="Runs active at once in one workspace.")


class BreakerSpec(BaseModel):
    """The failure circuit breaker of each agent's pool."""

    model_config = ConfigDict(extra="forbid")

    failures: int = Field(3, ge=1, description="Fast failures that trip the breaker.")
    fast_failure_s: float = Field(
        60,
        gt=0,
        description="A failed run counts as fast when it ended within this many seconds of its start.",
    )
    window_s: float = Field(
        600, gt=0, description="The fast failures must fall within this many seconds."
    )
    backoff_minutes: float = Field(30, gt=0, description="How long a tripped pool backs off.")


class DispatchSpec(BaseModel):
    """Where workspaces live and how many runs may go at once."""

    model_config = ConfigDict(extra="forbid")

    workspace_root: Path | None = Field(
        None,
        description="Directory holding workspaces; null means $FLEETBUS_HOME/workspaces. "
        "'~' is expanded.",
    )
    total_concurrency: int = Field(8, ge=1, description="Runs allowed at once, all agents.")
    start_frozen: bool = Field(
        False, description="Start the hub frozen: queued runs wait for runner.start."
    )
    drain_interval: float = Field(
        30, gt=0, description="Seconds between timer-driven drains of the queue."
    )
    kill_grace: float = Field(
        30, ge=0, description="Seconds between SIGTERM and SIGKILL when a run is killed."
    )
    max_prompt_bytes: int = Field(
        1048576, ge=1, description="Largest prompt accepted, in bytes (UTF-8)."
    )
    session: SessionSpec = Field(
        default_factory=SessionSpec, description="Session queue of each workspace."
    )
    breaker: BreakerSpec = Field(
        default_factory=BreakerSpec, description="Failure circuit breaker of each agent's pool."
    )

    @field_validator("workspace_root")
    @classmethod
    def _expand_user(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    def resolved_workspace_root(self, home: Path) -> Path:
        """`workspace_root`, or `home/workspaces` when unset."""
        return self.workspace_root if self.workspace_root is not None else home / "workspaces"


AGENTS = ConfigSection(
    "agents",
    dict[AgentName, AgentSpec],
    "Agents by name (lowercase letters, digits, - and _).",
)
DISPATCH = ConfigSection("dispatch", DispatchSpec, "Workspace root and global limits.")
