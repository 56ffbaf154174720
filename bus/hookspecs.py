"""The hooks a fleetbus plugin implements, and the markers to implement them with.

A plugin is a module (or object) with functions decorated by `hookimpl` whose names are
among the specs below; a misspelled name is rejected when the hub starts.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .actions import ActionRegistrar
    from .hub import Hub
    from .queries import QueryRegistrar
    from .store import MigrationsRegistrar
    from .subscribers import SubscriberRegistrar

PROJECT = "fleetbus"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_actions(register: ActionRegistrar) -> None:
    """Register the plugin's actions.

    `register(name, *, exposed=False, mutating=True, destructive=False, description=None,
    timeout=None)` returns a decorator for a handler `(input) -> output` or
    `(input, context) -> output`, sync or async. The input and output models come from the
    handler's annotations, the description from its docstring. `exposed=True` makes the
    action an MCP tool. Returns nothing.
    """


@hookspec
def register_queries(register: QueryRegistrar) -> None:
    """Register handlers for typed queries.

    `register(QueryType)` returns a decorator for a handler `(query) -> answer | None` or
    `(query, context) -> answer | None`. `bus.query` returns the first answer that is not
    None, `bus.query_all` every one. Returns nothing.
    """


@hookspec
def register_subscribers(subscribe: SubscriberRegistrar) -> None:
    """Subscribe handlers to messages.

    `subscribe(*topics_or_message_types, buffer=1024)` returns a decorator for a handler
    `(message) -> None` or `(message, context) -> None`, sync or async. Each handler gets
    its own bounded buffer; its exceptions are logged and counted. Returns nothing.
    """


@hookspec
def register_migrations(register: MigrationsRegistrar) -> None:
    """Register the plugin's database migrations.

    `register(migrations)` takes one `sqlite_utils.Migrations("fleetbus.<plugin>")` set;
    the hub applies every set at startup, in plugin order. Returns nothing.
    """


@hookspec
def startup(hub: Hub) -> Any:
    """Called once the store is migrated and every action is registered, in registration
    order. May be a coroutine function. Start long-running work with
    `hub.task_group.start_soon(...)`. An exception aborts the hub's start, naming the plugin.
    """


@hookspec
def shutdown(hub: Hub) -> Any:
    """Called when the hub stops, in reverse registration order. May be a coroutine
    function. Exceptions are logged; every plugin's shutdown still runs."""


@hookspec
def is_busy(hub: Hub) -> bool | None:
    """Return True while the plugin has work in flight (running or queued runs) so an
    idle hub does not exit. Returns True, False or None."""
