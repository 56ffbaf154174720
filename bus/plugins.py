"""The plugin manager of one hub: built-ins by module name, entry points, allow/deny lists.

Pluggy collects declarations once at startup; the bus dispatches. Environment:
- `FLEETBUS_PLUGINS`: comma-separated entry-point plugins to load (unset: all installed;
  empty: none). Built-ins always load unless disabled.
- `FLEETBUS_DISABLE_PLUGINS`: comma-separated plugin names (built-in or entry point) to skip.
- `FLEETBUS_TRACE=1`: log every hook call (plugins, arguments, result) at debug level
  on logger `fleetbus.plugins`.

Every hook goes through pluggy's hook caller, one plugin at a time (`callers`), so tracing,
`tryfirst`/`trylast` and hook wrappers apply while each result or error is still
attributed to its plugin.
"""

from __future__ import annotations

import difflib
import importlib
import importlib.metadata
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import pluggy

from . import hookspecs
from .config import ConfigSections
from .errors import BusError, StartupError

log = logging.getLogger("fleetbus.plugins")

ENTRY_POINT_GROUP = "fleetbus"
DEFAULT_PLUGINS: tuple[str, ...] = (
    "fleetbus.plugins.hub",
    "fleetbus.plugins.runner",
    "fleetbus.plugins.agentic",
    "fleetbus.plugins.sync",
    "fleetbus.plugins.fleet",
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


@dataclass(frozen=True, slots=True)
class PluginHook:
    """One plugin's implementation of one hook, called through pluggy: tracing and every
    hook wrapper apply to the call, and its results are that plugin's alone."""

    plugin: str
    hook: str
    caller: pluggy.HookCaller

    def __call__(self, **kwargs: Any) -> list[Any]:
        """The plugin's results (pluggy drops None); exceptions propagate."""
        return list(self.caller(**kwargs))

    def declare(self, **kwargs: Any) -> None:
        """Call a `register_*` hook; an error that is not a `BusError` becomes a
        `StartupError` naming the plugin."""
        try:
            self(**kwargs)
        except BusError:
            raise
        except Exception as e:
            raise StartupError(
                f"plugin {self.plugin!r} failed in {self.hook}: {type(e).__name__}: {e}"
            ) from e


def _trace_call(hook: str, impls: Sequence[pluggy.HookImpl], kwargs: Mapping[str, Any]) -> None:
    plugins = ", ".join(impl.plugin_name for impl in impls)
    args = ", ".join(f"{name}={value!r}" for name, value in kwargs.items())
    log.debug("hook %s [%s] (%s)", hook, plugins, args)


def _trace_result(
    outcome: pluggy.Result[Any],
    hook: str,
    impls: Sequence[pluggy.HookImpl],
    kwargs: Mapping[str, Any],
) -> None:
    plugins = ", ".join(impl.plugin_name for impl in impls)
    if outcome.exception is not None:
        log.debug("hook %s [%s] raised %r", hook, plugins, outcome.exception)
    else:
        log.debug("hook %s [%s] returned %r", hook, plugins, outcome.get_result())


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
        self._skipped_builtins: dict[str, str] = {}  # name -> module
        self._callers: dict[tuple[str, bool], list[PluginHook]] = {}
        self._not_loaded: dict[str, str] | None = None
        self._builtins = tuple(builtins)
        self._inline = tuple(inline)
        self._entry_points = entry_points
        self._allow = _names(env.get("FLEETBUS_PLUGINS"))
        self._deny = _names(env.get("FLEETBUS_DISABLE_PLUGINS")) or set()
        if env.get("FLEETBUS_TRACE"):
            self.pm.add_hookcall_monitoring(_trace_call, _trace_result)

    def load(self) -> None:
        """Register built-ins, inline plugins and entry points; raise StartupError on any fault."""
        for module in self._builtins:
            name = builtin_name(module)
            if name in self._deny:
                self.skipped.append((name, "disabled by FLEETBUS_DISABLE_PLUGINS"))
                self._skipped_builtins[name] = module
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

    def callers(self, hook: str, *, reverse: bool = False) -> list[PluginHook]:
        """A caller per plugin implementing `hook`, in call order: `tryfirst` ones, then the
        rest in registration order (reversed if `reverse`), then `trylast` ones.

        Each goes through a pluggy subset hook caller holding that plugin's implementation
        and every hook wrapper, so `FLEETBUS_TRACE` logs it and wrappers wrap it.
        """
        key = (hook, reverse)
        cached = self._callers.get(key)
        if cached is not None:
            return cached
        order = {info.name: n for n, info in enumerate(self.infos)}
        caller: pluggy.HookCaller = getattr(self.pm.hook, hook)
        impls = [i for i in caller.get_hookimpls() if not (i.hookwrapper or i.wrapper)]
        firsts: dict[str, pluggy.HookImpl] = {}
        for impl in impls:
            firsts.setdefault(impl.plugin_name, impl)
        sign = -1 if reverse else 1

        def rank(impl: pluggy.HookImpl) -> tuple[int, int]:
            place = 0 if impl.tryfirst else 2 if impl.trylast else 1
            return place, sign * order.get(impl.plugin_name, 1 << 30)

        everyone = {impl.plugin for impl in impls}
        result = [
            PluginHook(
                impl.plugin_name,
                hook,
                self.pm.subset_hook_caller(hook, everyone - {impl.plugin}),
            )
            for impl in sorted(firsts.values(), key=rank)
        ]
        self._callers[key] = result
        return result

    def register_config(self, sections: ConfigSections) -> None:
        """Let every plugin claim its manifest sections (`register_config`) into `sections`."""
        for call in self.callers("register_config"):
            call.declare(register=sections.registrar(call.plugin))

    def not_loaded_owner(self, section: str) -> str | None:
        """Why `section` is not checked when it belongs to a plugin that is not loaded:
        a skipped built-in's own sections (it is imported to ask), or a section named
        after a skipped plugin. None when no skipped plugin owns it."""
        if self._not_loaded is None:
            self._not_loaded = self._sections_of_skipped()
        return self._not_loaded.get(section)

    def _sections_of_skipped(self) -> dict[str, str]:
        found: dict[str, str] = {}
        for name, why in self.skipped:
            reason = f"plugin {name!r} is {why}"
            found.setdefault(name, reason)
            module = self._skipped_builtins.get(name)
            if module is None:
                continue  # third-party code that was turned off is not imported
            sections = ConfigSections()
            pm = pluggy.PluginManager(hookspecs.PROJECT)
            pm.add_hookspecs(hookspecs)
            try:
                pm.register(importlib.import_module(module), name=name)
                pm.hook.register_config(register=sections.registrar(name))
            except Exception:
                log.debug("cannot read the config sections of plugin %r", name, exc_info=True)
                continue
            for section in sections.sections:
                found[section] = reason
        return found

    def unregister_all(self) -> None:
        for info in reversed(self.infos):
            self.pm.unregister(name=info.name)
        self.infos.clear()
        self._callers.clear()
