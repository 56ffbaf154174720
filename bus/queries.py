"""Queries: typed questions that handlers answer in order.

`bus.query(q)` returns the first answer that is not None; `bus.query_all(q)` collects
every answer. (pluggy's `firstresult` cannot await async handlers, so pluggy only
collects the handlers and the bus asks them.)
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from pydantic import BaseModel

from .errors import StartupError
from .registrar import Registrar

if TYPE_CHECKING:
    from .hub import Hub

Q = TypeVar("Q", bound="Query")
F = TypeVar("F", bound=Callable[..., Any])


class Query(BaseModel):
    """Base of typed questions; `query_id` (default: the class name) addresses it over IPC."""

    query_id: ClassVar[str] = ""

    @classmethod
    def query_name(cls) -> str:
        return cls.query_id or cls.__name__


@dataclass(frozen=True, slots=True)
class QueryHandler:
    query_type: type[Query]
    handler: Callable[..., Any]
    plugin: str
    is_async: bool
    wants_context: bool


class QueryRegistrar(Registrar):
    """The `register` object a plugin's `register_queries(register)` hook receives::

    @register(WorkspaceQuery)
    async def workspaces(q: WorkspaceQuery) -> list[Workspace] | None: ...
    """

    def __init__(
        self, plugin: str, sink: Callable[[QueryHandler], None], hub: Hub | None = None
    ) -> None:
        super().__init__(plugin, hub)
        self._sink = sink

    def __call__(self, query_type: type[Query]) -> Callable[[F], F]:
        if not (isinstance(query_type, type) and issubclass(query_type, Query)):
            raise StartupError(f"plugin {self.plugin!r}: register_queries takes a Query subclass")

        def decorator(handler: F) -> F:
            func = inspect.unwrap(handler)
            nparams = len(inspect.signature(func).parameters)
            if nparams not in (1, 2):
                raise StartupError(
                    f"plugin {self.plugin!r}: a query handler takes (query) or (query, context)"
                )
            self._sink(
                QueryHandler(
                    query_type=query_type,
                    handler=handler,
                    plugin=self.plugin,
                    is_async=inspect.iscoroutinefunction(func),
                    wants_context=nparams == 2,
                )
            )
            return handler

        return decorator
