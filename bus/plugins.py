"""The plugin manager of one hub: built-ins by module name, entry points, allow/deny lists.

Pluggy collects declarations once at startup; the bus dispatches. Environment:
- `FLEETBUS_PLUGINS`: comma-separated entry-point plugins to load (unset: all installed;
  empty: none). Built-ins always load unless disabled.
- `FLEETBUS_DISABLE_PLUGINS`: comma-separated plugin names (built-in or entry point) to skip.
- `FLEETBUS_TRACE=1`: log every hook call at debug level.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import logging
import os
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pluggy

from . import hookspecs
from .errors import StartupError

log = logging.getLogger("fleetbus.plugins")

ENTRY_POINT_GROUP = "fleetbus"
DEFAULT_PLUGINS: tuple[str, ...] = (
    "fleetbus.plugins.hub",
    "fleetbus.plugins.runner",
    "fleetbus.server.mcp_host",
)
HOOK_NAMES = frozenset(
    name
    for name in dir(hookspecs)
    if hasattr(getattr(hookspecs, name), f"{hookspecs.PROJECT}_spec")
)


@dataclass(frozen=True, slots=True)
class PluginInfo:
    """One loaded plugin: its name, where it came from and its hooks."""

    name: str
    source: str  # builtin | entry point | inline
    module: str
    version: str | None
    hooks: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "source": self.source,
            "module": self.module,
            "version": self.version,
            "hooks": list(self.hooks),
        }


def _names(value: str | None) -> set[str] | None:
    if value is None:
        return None
    return {n.strip() for n in value.split(",") if n.strip()}


def builtin_name(module: str) -> str:
    """`fleetbus.plugins.runner` is known as `runner`."""
    return module.rsplit(".", 1)[-1]


class PluginSet:
    """A pluggy manager plus the order and origin of every plugin it holds."""

    def __init__(
        self,
        *,
        builtins: Sequence[str] = DEFAULT_PLUGINS,
        inline: Sequence[tuple[str, object]] = (),
        entry_points: bool = True,
        env: Mapping[str, str] = os.environ,
    ) -> None:
        self.pm = pluggy.PluginManager(hookspecs.PROJECT)
        self.pm.add_hookspecs(hookspecs)
        self.infos: list[PluginInfo] = []
        self.skipped: list[tuple[str, str]] = []  # (name, why)
        self._builtins = tuple(builtins)
        self._inline = tuple(inline)
        self._entry_points = entry_points
        self._allow = _names(env.get("FLEETBUS_PLUGINS"))
        self._deny = _names(env.get("FLEETBUS_DISABLE_PLUGINS")) or set()
        if env.get("FLEETBUS_TRACE"):
            self.pm.trace.root.setwriter(log.debug)
            self.pm.enable_tracing()

    def load(self) -> None:
        """Register built-ins, inline plugins and entry points; raise StartupError on any fault."""
        for module in self._builtins:
            name = builtin_name(module)
            if name in self._deny:
                self.skipped.append((name, "disabled by FLEETBUS_DISABLE_PLUGINS"))
                continue
            try:
                obj: object = importlib.import_module(module)
            except Exception as e:
                raise StartupError(
                    f"built-in plugin {name!r} ({module}) failed to import: {e}"
                ) from e
            self._register(name, obj, "builtin", module, None)
        for name, obj in self._inline:
            if name in self._deny:
                self.skipped.append((name, "disabled by FLEETBUS_DISABLE_PLUGINS"))
                continue
            self._register(name, obj, "inline", getattr(obj, "__name__", type(obj).__name__), None)
        if self._entry_points:
            self._load_entry_points()
        self._check_pending()

    def _load_entry_points(self) -> None:
        seen: set[str] = set()
        for ep in sorted(
            importlib.metadata.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name
        ):
            if ep.name in seen:
                continue
            seen.add(ep.name)
            dist = ep.dist.name if ep.dist else "?"
            version = ep.dist.version if ep.dist else None
            if ep.name in self._deny:
                self.skipped.append((ep.name, "disabled by FLEETBUS_DISABLE_PLUGINS"))
                continue
            if self._allow is not None and ep.name not in self._allow:
                self.skipped.append((ep.name, "not listed in FLEETBUS_PLUGINS"))
                continue
            try:
                obj = ep.load()
            except Exception as e:
                raise StartupError(
                    f"plugin {ep.name!r} (entry point {ep.value!r} of package {dist}) failed to load: "
                    f"{type(e).__name__}: {e}; fix or uninstall it, or set "
                    f"FLEETBUS_DISABLE_PLUGINS={ep.name}"
                ) from e
            self._register(ep.name, obj, "entry point", ep.value, version)

    def _register(
        self, name: str, obj: object, source: str, module: str, version: str | None
    ) -> None:
        if self.pm.has_plugin(name):
            other = next(i for i in self.infos if i.name == name)
            raise StartupError(
                f"two plugins are named {name!r} ({other.module} and {module}); "
                f"disable one with FLEETBUS_DISABLE_PLUGINS"
            )
        try:
            self.pm.register(obj, name=name)
        except pluggy.PluginValidationError as e:
            raise StartupError(f"plugin {name!r} is invalid: {e}") from e
        hooks = tuple(
            sorted(h.name for h in (self.pm.get_hookcallers(obj) or ()) if h.name in HOOK_NAMES)
        )
        self.infos.append(PluginInfo(name, source, module, version, hooks))

    def _check_pending(self) -> None:
        """Reject hook implementations whose name matches no spec (a misspelling)."""
        for info in self.infos:
            plugin = self.pm.get_plugin(info.name)
            for attr in dir(plugin):
                if attr in HOOK_NAMES or self.pm.parse_hookimpl_opts(plugin, attr) is None:
                    continue
                close = difflib.get_close_matches(attr, sorted(HOOK_NAMES), n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise StartupError(
                    f"plugin {info.name!r} implements unknown hook {attr!r}{hint}; "
                    f"known hooks: {', '.join(sorted(HOOK_NAMES))}"
                )
        try:
            self.pm.check_pending()
        except pluggy.PluginValidationError as e:
            raise StartupError(f"plugin {getattr(e, 'plugin', '?')!r}: {e}") from e

    @property
    def names(self) -> list[str]:
        return [i.name for i in self.infos]

    def impls(self, hook: str) -> Iterator[tuple[str, Callable[..., Any]]]:
        """(plugin name, function) for `hook`, in plugin registration order."""
        order = {info.name: n for n, info in enumerate(self.infos)}
        caller = getattr(self.pm.hook, hook)
        for impl in sorted(caller.get_hookimpls(), key=lambda i: order.get(i.plugin_name, 1 << 30)):
            yield impl.plugin_name, impl.function

    def unregister_all(self) -> None:
        for info in reversed(self.infos):
            self.pm.unregister(name=info.name)
        self.infos.clear()
