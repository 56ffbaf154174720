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
from typing import Any

_PREFIX = f"{os.getpid():x}{secrets.token_hex(3)}"
_COUNTER = itertools.count(1)


def new_id() -> str:
    """A short id unique across processes: pid + random salt + a counter (cheaper than uuid4)."""
    return f"{_PREFIX}-{next(_COUNTER):x}"


ProgressReporter = Callable[[float | None, str], None]


class Context:
    """Correlation id, caller and parent of one call.

    `caller` says who started the chain: `cli`, `mcp:<session>`, `run:<run_id>`, `hub`.
    `origin` carries string facts a front end wants back with the messages (an MCP
    session id, say). `job_id` is set while the call runs as a background job.
    Treat a context as immutable: derive new ones with `child()`.

    A plain class, not a dataclass, because one is made on every call: the generated
    `__init__` took three times as long. A new context takes its number at once but
    formats its id only when read (most ids never are); threads reading it at the same
    moment format the same string.
    """

    __slots__ = ("_id", "_n", "_reporter", "caller", "job_id", "origin", "parent_id")
    __match_args__ = ("correlation_id", "caller", "parent_id", "origin", "job_id", "_reporter")

    def __init__(
        self,
        correlation_id: str | None = None,
        caller: str = "local",
        parent_id: str | None = None,
        origin: Mapping[str, str] | None = None,
        job_id: str | None = None,
        _reporter: ProgressReporter | None = None,
    ) -> None:
        self._id = correlation_id
        self._n = next(_COUNTER) if correlation_id is None else 0
        self.caller = caller
        self.parent_id = parent_id
        self.origin: Mapping[str, str] = {} if origin is None else origin
        self.job_id = job_id
        self._reporter = _reporter

    @property
    def correlation_id(self) -> str:
        cid = self._id
        if cid is None:
            cid = self._id = f"{_PREFIX}-{self._n:x}"  # what new_id() would have returned
        return cid

    def _fields(self) -> tuple[Any, ...]:
        return (self.correlation_id, self.caller, self.parent_id, self.origin, self.job_id)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Context) and other.__class__ is self.__class__:
            return self._fields() == other._fields()
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # compared by value, as the dataclass was

    def __repr__(self) -> str:
        return (
            f"Context(correlation_id={self.correlation_id!r}, caller={self.caller!r}, "
            f"parent_id={self.parent_id!r}, origin={self.origin!r}, job_id={self.job_id!r})"
        )

    def child(self, *, caller: str | None = None) -> Context:
        """A new context caused by this one (same origin, this id as parent)."""
        # positional: a class called with keywords packs them into a dict first
        return Context(None, caller or self.caller, self.correlation_id, self.origin)

    def with_job(self, job_id: str, reporter: ProgressReporter) -> Context:
        return Context(
            self.correlation_id, self.caller, self.parent_id, self.origin, job_id, reporter
        )

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
