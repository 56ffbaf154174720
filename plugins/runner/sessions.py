"""The session policy: what a new prompt to a workspace does, given what runs there.

`SessionPolicy.admit` is a pure function of the prompt, the workspace's session (is it
busy, which runs wait in it) and the time; it answers one of:
- `Start`: the workspace is free and nothing waits ahead of the prompt anywhere;
- `Merge`: debounce folds the prompt into the workspace's last waiting run;
- `Refuse`: the session queue is full and the policy drops new prompts;
- `Enqueue`: the prompt waits (behind the session's runs, or for a lane or a rate), after
  the oldest waiting run is dropped when the queue is full and the policy drops old ones.

An `interrupt` prompt has the workspace's runs cancelled before it is admitted (the
service does that), so the policy sees the session as it is then.

Decisions made here where the design is silent: debounce applies only to a busy
workspace (the first prompt to an idle one starts at once); a prompt merges into the last
waiting run when it comes within `debounce_ms` of that run's previous prompt, for the same
agent and model, without an idempotency key, and when the merged prompt still fits; the
merged run waits for that quiet period before it starts.

Pure: never touches the database, the bus, a process or a clock (`now` is given).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from .config import SessionSpec

MERGE_SEPARATOR_BYTES = 2  # the blank line between merged prompts


@dataclass(frozen=True)
class Prompt:
    """A new prompt, as the policy sees it."""

    agent: str
    model: str | None
    size: int  # bytes (UTF-8)
    mode: str  # queue | followup | interrupt
    idempotent: bool  # has an idempotency key: never merged into another run
    merge_limit: int  # the largest prompt the agent accepts, merged or not


@dataclass(frozen=True)
class Waiting:
    """A run waiting in the workspace's session queue."""

    run_id: str
    agent: str
    model: str | None
    size: int  # bytes of its prompt
    merged_at: float  # when its last prompt came

    @classmethod
    def of(cls, row: dict[str, Any]) -> Waiting:
        return cls(row["id"], row["agent"], row["model"], row["prompt_bytes"], row["merged_at"])


@dataclass(frozen=True)
class Start:
    pass


@dataclass(frozen=True)
class Merge:
    into: str  # the waiting run that takes the prompt
    not_before: float  # the merged run waits for quiet until then


@dataclass(frozen=True)
class Refuse:
    reason: str  # recorded on the refused run
    answer: str  # what the dispatch result says


@dataclass(frozen=True)
class Enqueue:
    behind_session: bool  # waits for the workspace's own runs
    not_before: float
    drop_oldest: str | None = None  # a waiting run to cancel first (the queue is full)
    drop_reason: str = ""

    @property
    def reason(self) -> str:
        return "session busy" if self.behind_session else ""


Decision = Start | Merge | Refuse | Enqueue


@dataclass(frozen=True)
class SessionPolicy:
    spec: SessionSpec

    @property
    def window(self) -> float:
        """The debounce window in seconds."""
        return self.spec.debounce_ms / 1000

    def admit(
        self,
        prompt: Prompt,
        workspace: str,
        *,
        busy: bool,
        waiting: Sequence[Waiting],
        startable: bool,
        now: float,
    ) -> Decision:
        """What `prompt` to `workspace` does. `busy`: the workspace runs as many runs as
        its session allows; `waiting`: its queued runs, oldest first; `startable`: the
        runner could start the prompt's agent now with nothing queued anywhere."""
        if not busy and startable:
            return Start()
        if waiting and self.window > 0 and prompt.mode != "interrupt":
            last = waiting[-1]
            merged = last.size + MERGE_SEPARATOR_BYTES + prompt.size
            if (
                now - last.merged_at <= self.window
                and last.agent == prompt.agent
                and last.model == prompt.model
                and not prompt.idempotent
                and merged <= prompt.merge_limit
            ):
                return Merge(last.run_id, now + self.window)
        return self.wait_or_refuse(workspace, busy=busy, waiting=waiting, now=now)

    def wait_or_refuse(
        self, workspace: str, *, busy: bool, waiting: Sequence[Waiting], now: float
    ) -> Enqueue | Refuse:
        """A prompt that neither starts nor merges: it waits, unless the session queue is
        full and the policy drops new prompts; a full queue that drops old ones drops
        its oldest waiting run."""
        cap = self.spec.cap
        drop_oldest, drop_reason = None, ""
        if len(waiting) >= cap:
            if self.spec.drop == "new":
                return Refuse(
                    f"refused: the session queue of {workspace} is full ({cap} waiting; drop new)",
                    f"session queue full ({cap})",
                )
            drop_oldest = waiting[0].run_id
            drop_reason = (
                f"dropped: the session queue of {workspace} was full ({cap} waiting; drop old)"
            )
        behind = busy or bool(waiting)
        return Enqueue(
            behind_session=behind,
            not_before=now + self.window if behind else 0.0,
            drop_oldest=drop_oldest,
            drop_reason=drop_reason,
        )
