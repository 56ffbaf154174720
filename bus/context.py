"""The call context: who asked, under which correlation id, caused by what.

A `Context` travels with every action and with every message the action causes, so a
channel event can find the MCP session that asked for a run (Home Assistant's `Context`).
"""

from __future__ import annotations

import itertools
import os
import secrets
from collections.abc import Callable, Mapping
from contextvars import ContextVar
from dataclasses import dataclass, field, replace
from typing import Any

_PREFIX = f"{os.getpid():x}{secrets.token_hex(3)}"
_COUNTER = itertools.count(1)


def new_id() -> str:
    """A short id unique across processes: pid + random salt + a counter (cheaper than uuid4)."""
    return f"{_PREFIX}-{next(_COUNTER):x}"


ProgressReporter = Callable[[float | None, str], None]


@dataclass(slots=True)
class Context:
    """Correlation id, caller and parent of one call.

    `caller` says who started the chain: `cli`, `mcp:<session>`, `run:<run_id>`, `hub`.
    `origin` carries string facts a front end wants back with the messages (an MCP
    session id, say). `job_id` is set while the call runs as a background job.
    Treat a context as immutable: derive new ones with `child()` (it is not a frozen
    dataclass only because that makes creating one, on every call, twice as slow).
    """

    correlation_id: str = field(default_factory=new_id)
    caller: str = "local"
    parent_id: str | None = None
    origin: Mapping[str, str] = field(default_factory=dict)
    job_id: str | None = None
    _reporter: ProgressReporter | None = field(default=None, compare=False, repr=False)

    def child(self, *, caller: str | None = None) -> Context:
        """A new context caused by this one (same origin, this id as parent)."""
        return Context(
            caller=caller or self.caller,
            parent_id=self.correlation_id,
            origin=self.origin,
        )

    def with_job(self, job_id: str, reporter: ProgressReporter) -> Context:
        return replace(self, job_id=job_id, _reporter=reporter)

    def report_progress(self, progress: float | None = None, message: str = "") -> None:
        """Publish a progress message for the job this call runs in; a no-op otherwise."""
        if self._reporter is not None:
            self._reporter(progress, message)

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {"correlation_id": self.correlation_id, "caller": self.caller}
        if self.parent_id:
            data["parent_id"] = self.parent_id
        if self.origin:
            data["origin"] = dict(self.origin)
        if self.job_id:
            data["job_id"] = self.job_id
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any] | None, *, caller: str = "local") -> Context:
        """Rebuild a context sent by a client; unknown keys are ignored, bad types refused."""
        if not data:
            return cls(caller=caller)
        origin = data.get("origin") or {}
        if not isinstance(origin, Mapping):
            raise TypeError("context.origin must be an object of strings")
        return cls(
            correlation_id=str(data.get("correlation_id") or new_id()),
            caller=str(data.get("caller") or caller),
            parent_id=str(data["parent_id"]) if data.get("parent_id") else None,
            origin={str(k): str(v) for k, v in origin.items()},
        )


current_context: ContextVar[Context | None] = ContextVar("fleetbus_context", default=None)
"""The context of the action running in this task; actions called inside inherit it as parent."""
