"""fleetbus's core: the bus, its plugin hooks, the store, the hub and its clients.

Plugin authors need only `hookimpl` (and, for typed handlers, `Context`, `Message`,
`Query` and the errors)::

    from fleetbus.bus import hookimpl
"""

from .actions import ActionRegistrar, ActionSpec, NoInput
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
    "ConfigError",
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
    "Store",
    "SubscriberRegistrar",
    "Subscription",
    "Tx",
    "hookimpl",
    "hookspec",
]
