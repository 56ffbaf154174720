"""The `subscribe` object a plugin's `register_subscribers(subscribe)` hook receives."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from .errors import StartupError
from .messages import DEFAULT_BUFFER, Message
from .registrar import Registrar

if TYPE_CHECKING:
    from .hub import Hub

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class SubscriberSpec:
    handler: Callable[..., Any]
    topics: tuple[str, ...]
    plugin: str
    buffer: int


class SubscriberRegistrar(Registrar):
    """`@subscribe(AgentCompleted, "runner.*", buffer=256)` on a handler `(message[, context])`."""

    def __init__(
        self, plugin: str, sink: Callable[[SubscriberSpec], None], hub: Hub | None = None
    ) -> None:
        super().__init__(plugin, hub)
        self._sink = sink

    def __call__(
        self, *topics: str | type[Message], buffer: int = DEFAULT_BUFFER
    ) -> Callable[[F], F]:
        names: list[str] = []
        for t in topics:
            if isinstance(t, str):
                names.append(t)
            elif isinstance(t, type) and issubclass(t, Message):
                names.append(t.topic)
            else:
                raise StartupError(
                    f"plugin {self.plugin!r}: subscribe() takes topic strings or Message classes"
                )
        if not names:
            raise StartupError(
                f"plugin {self.plugin!r}: subscribe() needs at least one topic ('*' for all)"
            )

        def decorator(handler: F) -> F:
            self._sink(SubscriberSpec(handler, tuple(names), self.plugin, buffer))
            return handler

        return decorator
