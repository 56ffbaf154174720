"""The bus's exceptions: who is at fault, and one clear line saying what to do.

`BusError` is the base. `InvalidInput` means the caller sent bad data; `ActionFailed`
means the handler broke (chained to its cause). Every error has a stable `code` and a
`to_dict()` form so it crosses the IPC socket and the MCP boundary unchanged.

Messages quote what the caller sent (a workspace name, an action name), and a caller can
send a megabyte: every message is cut where it is made (`cut_echo`), so no word of it is
longer than `ECHO_LIMIT` characters and the whole no longer than `MESSAGE_LIMIT`, each cut
marked with "…".
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pydantic stays out of the import of light clients (the stdio relay)
    from pydantic import ValidationError

ECHO_LIMIT = 200  # characters of one echoed value (one word of a message)
MESSAGE_LIMIT = 2000  # characters of one whole message
_LONG_WORD = re.compile(rf"\S{{{ECHO_LIMIT + 1},}}")


def cut(value: str, limit: int = ECHO_LIMIT) -> str:
    """`value` within `limit` characters, ending in "…" when it was cut."""
    return value if len(value) <= limit else value[: limit - 1] + "…"


def cut_echo(message: str) -> str:
    """`message` with every word over `ECHO_LIMIT` characters cut, and within
    `MESSAGE_LIMIT` characters: what a caller sent is quoted, never echoed whole."""
    if len(message) > ECHO_LIMIT:
        message = _LONG_WORD.sub(lambda m: cut(m.group(0)), message)
    return cut(message, MESSAGE_LIMIT)


class BusError(Exception):
    """Base of every error the bus raises on purpose."""

    code = "bus_error"

    def __init__(self, message: str, *, data: Mapping[str, Any] | None = None) -> None:
        message = cut_echo(message)
        super().__init__(message)
        self.message = message
        self.data: dict[str, Any] = dict(data or {})

    def to_dict(self) -> dict[str, Any]:
        return {
            "type": type(self).__name__,
            "code": self.code,
            "message": self.message,
            **self.data,
        }

    def __str__(self) -> str:
        return self.message


class ActionNotFound(BusError):
    """No action of that name is registered."""

    code = "action_not_found"

    def __init__(self, name: str, known: Iterable[str] = ()) -> None:
        known = sorted(known)
        hint = "run `fleetbus actions` to list them" if known else "no actions are registered"
        super().__init__(f"unknown action {name!r}: {hint}", data={"action": cut(name)})
        self.name = name


class QueryNotAnswered(BusError):
    """No handler answered a query."""

    code = "query_not_answered"


class InvalidInput(BusError):
    """The caller's data failed validation; `errors` holds one entry per bad field."""

    code = "invalid_input"

    def __init__(self, message: str, errors: Sequence[Mapping[str, Any]] = ()) -> None:
        self.errors = [
            {k: cut_echo(v) if isinstance(v, str) else v for k, v in e.items()} for e in errors
        ]
        super().__init__(message, data={"errors": self.errors})

    @classmethod
    def from_validation(cls, where: str, exc: ValidationError) -> InvalidInput:
        """Translate pydantic's error into field paths a person can read."""
        errors = []
        for err in exc.errors(include_url=False, include_context=False, include_input=False):
            loc = ".".join(str(part) for part in err["loc"]) or "(input)"
            errors.append({"field": loc, "message": err["msg"]})
        return cls.from_errors(where, errors)

    @classmethod
    def from_errors(cls, where: str, errors: Sequence[Mapping[str, Any]]) -> InvalidInput:
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return cls(f"{where}: invalid input: {detail}", errors)


class ActionFailed(BusError):
    """The handler raised; the original exception is the `__cause__`."""

    code = "action_failed"


class ActionTimeout(BusError):
    """The handler did not finish within its time limit."""

    code = "action_timeout"


class Refused(BusError):
    """The handler understood the request and declined it (frozen, quota, not found)."""

    code = "refused"


class StartupError(BusError):
    """The hub cannot start: a broken plugin, manifest, store or a second hub."""

    code = "startup_error"


class ConfigError(StartupError):
    """A manifest file is unreadable or invalid; the message names the file and key."""

    code = "config_error"


class ConnectionFailed(BusError):
    """The hub's socket cannot be reached or spoke something unexpected."""

    code = "connection_failed"


ERROR_TYPES: dict[str, type[BusError]] = {
    cls.__name__: cls
    for cls in (
        BusError,
        ActionNotFound,
        QueryNotAnswered,
        InvalidInput,
        ActionFailed,
        ActionTimeout,
        Refused,
        StartupError,
        ConfigError,
        ConnectionFailed,
    )
}


def error_from_dict(data: Mapping[str, Any]) -> BusError:
    """Rebuild an error sent over the wire by `BusError.to_dict()`."""
    cls = ERROR_TYPES.get(str(data.get("type")), BusError)
    message = str(data.get("message", "unknown error"))
    extra = {k: v for k, v in data.items() if k not in {"type", "code", "message"}}
    err = BusError.__new__(cls)
    BusError.__init__(err, message, data=extra)
    if isinstance(err, InvalidInput):
        err.errors = list(extra.get("errors", []))
    if isinstance(err, ActionNotFound):
        err.name = str(extra.get("action", ""))
    return err


@contextmanager
def unwrap_group() -> Iterator[None]:
    """Re-raise the lone exception of an ExceptionGroup (anyio task groups always wrap)."""
    try:
        yield
    except BaseExceptionGroup as group:
        leaves = list(_leaves(group))
        if len(leaves) == 1:
            raise leaves[0] from leaves[0].__cause__
        raise


def _leaves(group: BaseExceptionGroup[BaseException]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc
