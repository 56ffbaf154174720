"""fleetbus's core: the bus, its plugin hooks, the store, the hub and its clients.

Plugin authors need only `hookimpl` (and, for typed handlers, `Context`, `Message`,
`Query` and the errors; `ConfigSection` for a config section, `StashKey` for per-hub
objects)::

    from fleetbus.bus import hookimpl

Names are imported on first use, so a light client (the stdio relay, the CLI) can import
`fleetbus.bus.paths` without loading pydantic or the store.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .actions import ActionRegistrar, ActionSpec, NoInput
    from .config import Config, ConfigRegistrar, ConfigSection
    from .context import Context
    from .core import Bus, Job
    from .errors import (
        ActionFailed,
        ActionNotFound,
        ActionTimeout,
        BusError,
        ConfigError,
        ConnectionFailed,
        InvalidInput,
        QueryNotAnswered,
        Refused,
        StartupError,
    )
    from .hookspecs import hookimpl, hookspec
    from .messages import (
        ChannelPush,
        Envelope,
        JobCompleted,
        JobProgress,
        JobStarted,
        Message,
        Subscription,
    )
    from .queries import Query, QueryRegistrar
    from .stash import Stash, StashKey
    from .store import MigrationsRegistrar, Store, Tx
    from .subscribers import SubscriberRegistrar

__all__ = [
    "ActionFailed",
    "ActionNotFound",
    "ActionRegistrar",
    "ActionSpec",
    "ActionTimeout",
    "Bus",
    "BusError",
    "ChannelPush",
    "Config",
    "ConfigError",
    "ConfigRegistrar",
    "ConfigSection",
    "ConnectionFailed",
    "Context",
    "Envelope",
    "InvalidInput",
    "Job",
    "JobCompleted",
    "JobProgress",
    "JobStarted",
    "Message",
    "MigrationsRegistrar",
    "NoInput",
    "Query",
    "QueryNotAnswered",
    "QueryRegistrar",
    "Refused",
    "StartupError",
    "Stash",
    "StashKey",
    "Store",
    "SubscriberRegistrar",
    "Subscription",
    "Tx",
    "hookimpl",
    "hookspec",
]

_WHERE = {
    "ActionFailed": "errors",
    "ActionNotFound": "errors",
    "ActionRegistrar": "actions",
    "ActionSpec": "actions",
    "ActionTimeout": "errors",
    "Bus": "core",
    "BusError": "errors",
    "ChannelPush": "messages",
    "Config": "config",
    "ConfigError": "errors",
    "ConfigRegistrar": "config",
    "ConfigSection": "config",
    "ConnectionFailed": "errors",
    "Context": "context",
    "Envelope": "messages",
    "InvalidInput": "errors",
    "Job": "core",
    "JobCompleted": "messages",
    "JobProgress": "messages",
    "JobStarted": "messages",
    "Message": "messages",
    "MigrationsRegistrar": "store",
    "NoInput": "actions",
    "Query": "queries",
    "QueryNotAnswered": "errors",
    "QueryRegistrar": "queries",
    "Refused": "errors",
    "StartupError": "errors",
    "Stash": "stash",
    "StashKey": "stash",
    "Store": "store",
    "SubscriberRegistrar": "subscribers",
    "Subscription": "messages",
    "Tx": "store",
    "hookimpl": "hookspecs",
    "hookspec": "hookspecs",
}


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'fleetbus.bus' has no attribute {name!r}")
    value = getattr(importlib.import_module(f".{module}", __name__), name)
    globals()[name] = value
    return value
