"""Configuration sections: each service claims its own top-level manifest sections.

A plugin declares a section at module level and registers it from its `register_config`
hook (pytest's `pytest_addoption`, tox's `tox_add_env_config`)::

    HELLO = ConfigSection("hello", HelloConfig, "Settings of the hello plugin.")

    @hookimpl
    def register_config(register):
        register(HELLO)

and reads it, validated, with `hub.config[HELLO]`. The core loads and merges the YAML,
builds the manifest's model from the registered sections, and blames file and key for
every error (`manifests.py`).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Generic, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, create_model

from .errors import StartupError

T = TypeVar("T")

CORE = ""
"""The owner of the core's own sections (`hub`)."""

SECTION_NAME = re.compile(r"^[a-z][a-z0-9_]{0,63}$")
_RESERVED = frozenset(dir(BaseModel))


def owner_text(plugin: str) -> str:
    """`plugin 'runner'`, or `the core` for the core's own sections."""
    return f"plugin {plugin!r}" if plugin != CORE else "the core"


@dataclass(frozen=True, eq=False)
class ConfigSection(Generic[T]):
    """A top-level manifest section: its key, its type and what it configures.

    `model` is anything pydantic validates from a mapping: a `BaseModel` (give every field
    a default and a description, and `extra="forbid"` so typos are refused) or a mapping
    type such as `dict[str, WorkerSpec]`. A section missing from every file is validated as
    an empty mapping. The section object is also the key that reads it: `hub.config[SECTION]`.
    """

    name: str
    model: type[T]
    description: str

    def __post_init__(self) -> None:
        if not SECTION_NAME.match(self.name) or self.name in _RESERVED:
            raise StartupError(
                f"config section name {self.name!r} must be 1-64 lowercase letters, digits "
                "or '_', start with a letter, and not be a pydantic BaseModel attribute"
            )

    @cached_property
    def adapter(self) -> TypeAdapter[T]:
        return TypeAdapter(self.model)

    def empty(self) -> T:
        """The section's value when no file sets it."""
        return self.adapter.validate_python({})


class ConfigRegistrar:
    """The `register` object a plugin's `register_config(register)` hook receives::

    register(ConfigSection("hello", HelloConfig, "Settings of the hello plugin."))
    """

    def __init__(self, plugin: str, sink: Callable[[str, ConfigSection[Any]], None]) -> None:
        self.plugin = plugin
        self._sink = sink

    def __call__(self, section: ConfigSection[T]) -> ConfigSection[T]:
        if not isinstance(section, ConfigSection):
            raise StartupError(
                f"plugin {self.plugin!r}: register() takes a ConfigSection, "
                f"not {type(section).__name__}"
            )
        self._sink(self.plugin, section)
        return section

    def __repr__(self) -> str:
        return f"<ConfigRegistrar of plugin {self.plugin!r}>"


class ConfigSections:
    """The registered sections and their owners: the shape of the manifest.

    `not_loaded(name)` says why a section no loaded plugin owns belongs to a plugin that is
    not loaded (disabled, not allowed), or returns None when nothing is known of it.
    """

    def __init__(self, not_loaded: Callable[[str], str | None] | None = None) -> None:
        self.sections: dict[str, ConfigSection[Any]] = {}
        self.owners: dict[str, str] = {}
        self.not_loaded: Callable[[str], str | None] = not_loaded or (lambda name: None)

    def add(self, plugin: str, section: ConfigSection[Any]) -> None:
        """Claim `section` for `plugin`; a name claimed before is a startup error naming both."""
        owner = self.owners.get(section.name)
        if owner is not None:
            if owner == plugin:
                raise StartupError(
                    f"{owner_text(plugin)} registers config section {section.name!r} twice"
                )
            raise StartupError(
                f"config section {section.name!r} is registered twice: by {owner_text(owner)} "
                f"and by {owner_text(plugin)}; disable one with FLEETBUS_DISABLE_PLUGINS"
            )
        self.sections[section.name] = section
        self.owners[section.name] = plugin

    def registrar(self, plugin: str) -> ConfigRegistrar:
        return ConfigRegistrar(plugin, self.add)

    def model(self) -> type[BaseModel]:
        """The whole manifest's model: one field per section, unknown keys refused."""
        fields: dict[str, Any] = {
            name: (
                section.model,
                Field(default_factory=section.empty, description=section.description),
            )
            for name, section in sorted(self.sections.items())
        }
        return create_model(
            "Manifest",
            __config__=ConfigDict(extra="forbid"),
            __doc__="The whole configuration: the sections the core and the plugins registered.",
            **fields,
        )


class Config:
    """The validated manifest: `config[SECTION]` is that section's value, typed.

    `config.<name>` reads a section by name, untyped. `ignored` maps the sections that were
    not validated (their plugin is not loaded) to the reason.
    """

    def __init__(
        self,
        sections: ConfigSections,
        values: Mapping[str, Any],
        ignored: Mapping[str, str] | None = None,
    ) -> None:
        self._sections = sections
        self._values = dict(values)
        self.ignored: dict[str, str] = dict(ignored or {})

    def __getitem__(self, section: ConfigSection[T]) -> T:
        if self._sections.sections.get(section.name) is not section:
            why = self.ignored.get(section.name) or "no loaded plugin registered it"
            raise KeyError(f"config section {section.name!r} is not loaded: {why}")
        return self._values[section.name]  # type: ignore[no-any-return]

    def __contains__(self, section: object) -> bool:
        return (
            isinstance(section, ConfigSection)
            and self._sections.sections.get(section.name) is section
        )

    def __getattr__(self, name: str) -> Any:
        if not name.startswith("_"):
            try:
                return self._values[name]
            except KeyError:
                pass
        raise AttributeError(
            f"no config section {name!r} (sections: {', '.join(sorted(self._values))})"
        )

    def __iter__(self) -> Iterator[str]:
        """Section names, sorted."""
        return iter(sorted(self._values))

    def owner(self, name: str) -> str | None:
        """The plugin that owns section `name` (`CORE` for the core), or None."""
        return self._sections.owners.get(name)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Config):
            return NotImplemented
        return self._values == other._values and self.ignored == other.ignored

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"Config({', '.join(sorted(self._values))})"
