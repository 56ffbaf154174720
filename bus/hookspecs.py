"""The hooks a fleetbus plugin implements, and the markers to implement them with.

A plugin is a module (or object) with functions decorated by `hookimpl` whose names are
among the specs below; a misspelled name is rejected when the hub starts. An
implementation may take fewer parameters than its spec (pluggy passes only the ones it
names), so `register_actions(register)` and `register_actions(register, hub)` both work.
The hub calls each plugin's implementation in turn through pluggy: `tryfirst`/`trylast`
move a plugin to the front or back, and a hook wrapper wraps each plugin's call.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from .actions import ActionRegistrar
    from .config import ConfigRegistrar
    from .hub import Hub
    from .queries import QueryRegistrar
    from .store import MigrationsRegistrar
    from .subscribers import SubscriberRegistrar

PROJECT = "fleetbus"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_config(register: ConfigRegistrar) -> None:
    """Claim the plugin's top-level manifest sections.

    `register(ConfigSection(name, model, description))` claims section `name`, validated by
    the pydantic `model`; read it with `hub.config[section]`. Called once plugins are
    loaded, before the manifest is validated and before any other hook; a section another
    plugin (or the core: `hub`) claimed stops the hub naming both. Receives no hub: the
    sections are declarations, also read to check a file or write the JSON Schemas.
    Returns nothing.
    """


@hookspec
def register_actions(register: ActionRegistrar, hub: Hub) -> None:
    """Register the plugin's actions.

    `register(name, *, exposed=False, mutating=True, destructive=False, description=None,
    timeout=None)` returns a decorator for a handler `(input) -> output` or
    `(input, context) -> output`, sync or async. The input and output models come from the
    handler's annotations, the description from its docstring. `exposed=True` makes the
    action an MCP tool. `hub` is the hub being started (config loaded, store migrated).
    Returns nothing.
    """


@hookspec
def register_queries(register: QueryRegistrar, hub: Hub) -> None:
    """Register handlers for typed queries.

    `register(QueryType)` returns a decorator for a handler `(query) -> answer | None` or
    `(query, context) -> answer | None`. `bus.query` returns the first answer that is not
    None, `bus.query_all` every one. `hub` is the hub being started. Returns nothing.
    """


@hookspec
def register_subscribers(subscribe: SubscriberRegistrar, hub: Hub) -> None:
    """Subscribe handlers to messages.

    `subscribe(*topics_or_message_types, buffer=1024)` returns a decorator for a handler
    `(message) -> None` or `(message, context) -> None`, sync or async. Each handler gets
    its own bounded buffer; its exceptions are logged and counted. `hub` is the hub being
    started. Returns nothing.
    """


@hookspec
def register_migrations(register: MigrationsRegistrar, hub: Hub) -> None:
    """Register the plugin's database migrations.

    `register(migrations)` takes one `sqlite_utils.Migrations("fleetbus.<plugin>")` set;
    the hub applies every set at startup, in plugin order. `hub` is the hub being started.
    Returns nothing.
    """


@hookspec
def startup(hub: Hub) -> Any:
    """Called once the store is migrated and every action is registered, in registration
    order. May be a coroutine function (the hub awaits it after the hook call returns).
    Start long-running work with `hub.task_group.start_soon(...)`; keep per-hub objects in
    `hub.stash`. An exception aborts the hub's start, naming the plugin.
    """


@hookspec
def shutdown(hub: Hub) -> Any:
    """Called when the hub stops, in reverse registration order. May be a coroutine
    function. Exceptions are logged; every plugin's shutdown still runs."""


@hookspec
def is_busy(hub: Hub) -> bool | None:
    """Return True while the plugin has work in flight (running or queued runs) so an
    idle hub does not exit. Returns True, False or None."""
