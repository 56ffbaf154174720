"""The agentic service's configuration: the `agentic` manifest section.

Agents themselves (command, models, capabilities, concurrency) are the runner's `agents`
section; this section adds what routing and allowances need per agent, retries, the
set-up of a new workspace and the prompt template.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fleetbus.bus.config import ConfigSection

from .prompt import check_template

__all__ = ["AGENTIC", "AgentPolicy", "AgenticSpec", "Allowance", "SetupSpec"]


class Allowance(BaseModel):
    """What one agent may use; every limit is optional (None: no limit)."""

    model_config = ConfigDict(extra="forbid")

    daily_job_limit: int | None = Field(None, ge=0, description="Runs started per UTC day.")
    daily_token_limit: int | None = Field(None, ge=0, description="Tokens used per UTC day.")
    daily_cost_limit: float | None = Field(None, ge=0, description="US dollars per UTC day.")
    concurrent_jobs: int | None = Field(None, ge=1, description="Tasks running at once.")
    max_job_duration: float | None = Field(
        None, gt=0, description="Minutes a run may last (the run's timeout, capped)."
    )
    model_allowlist: list[str] | None = Field(
        None, description="Models this agent may be dispatched with (None: any it knows)."
    )


class AgentPolicy(BaseModel):
    """Routing and allowance of one of the runner's agents."""

    model_config = ConfigDict(extra="forbid")

    max_load: int | None = Field(
        None, ge=1, description="Tasks it takes at once; default: its concurrency."
    )
    allowance: Allowance = Field(default_factory=Allowance, description="Its limits.")
    route: bool = Field(True, description="Whether the router may pick it.")


class SetupSpec(BaseModel):
    """What is done to a new workspace before its first run."""

    model_config = ConfigDict(extra="forbid")

    copy_files: list[str] = Field(
        default_factory=list,
        description="Files copied from the source repository into the workspace (e.g. .env), "
        "when they exist there; relative paths inside the repository only.",
    )
    command: list[str] | None = Field(
        None, description="A set-up command run in the workspace (argv list, no shell)."
    )
    timeout_s: float = Field(300, gt=0, description="Seconds the set-up command may take.")


class AgenticSpec(BaseModel):
    """Tasks in git workspaces: retries, routing, allowances, set-up and prompts."""

    model_config = ConfigDict(extra="forbid")

    max_retries: int = Field(3, ge=0, le=100, description="Default retries of a failed task.")
    retry_base_s: float = Field(
        5, gt=0, description="Backoff of retry n is retry_base_s * 2^(n-1) seconds."
    )
    commit_leftovers: bool = Field(
        True,
        description="Commit the changes a run left uncommitted to the task branch, with a "
        "message naming the run.",
    )
    sweep_s: float = Field(
        5, gt=0, description="Seconds between checks for due retries and ended runs."
    )
    agents: dict[str, AgentPolicy] = Field(
        default_factory=dict, description="Routing and allowance per agent (by runner agent name)."
    )
    setup: SetupSpec = Field(default_factory=SetupSpec, description="Workspace set-up.")
    prompt_template: str | None = Field(
        None,
        description="The prompt, with {task} {repo} {branch} {base} {language} {build} {test} "
        "{constraints} {ask}; default: the built-in template.",
    )
    constraints: list[str] = Field(
        default_factory=lambda: [
            "Work only inside this workspace, and commit your work to the current branch.",
            "Do not push, and do not change other branches.",
        ],
        description="Lines the prompt lists under Constraints.",
    )

    @field_validator("prompt_template")
    @classmethod
    def _known_fields(cls, value: str | None) -> str | None:
        problem = check_template(value) if value is not None else None
        if problem:
            raise ValueError(problem)
        return value


AGENTIC = ConfigSection("agentic", AgenticSpec, "Agentic tasks: retries, routing, allowances.")
