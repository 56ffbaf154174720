"""Manifests: the declarative YAML that configures the hub and its plugins.

The built-in `fleetbus.manifests/*.yaml` files are deep-merged in name order, then the
user's file (`user_config_path()`) on top: mappings merge, lists and scalars replace, and
`null` removes a key. Each top-level key is a section that a plugin registered with its
pydantic model (`config.py`; the core owns `hub`); the merged document is validated by
the model built from those sections, and any problem becomes one `ConfigError` line
naming the file, the dotted key path and the plugin that owns the section.

`python -m fleetbus.bus.manifests --write-schemas` regenerates `manifests/schema/*.json`.
"""

from __future__ import annotations

import argparse
import difflib
import json
import logging
import os
import sys
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Union, get_args, get_origin

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .config import CORE, Config, ConfigSection, ConfigSections, owner_text
from .errors import ConfigError, StartupError

if TYPE_CHECKING:
    from .plugins import PluginSet

log = logging.getLogger("fleetbus.manifests")

SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"


class HubSpec(BaseModel):
    """Settings of the hub process."""

    model_config = ConfigDict(extra="forbid")

    idle_timeout: float = Field(
        600,
        ge=0,
        description="Seconds without clients or work after which the hub exits; 0 disables.",
    )


HUB = ConfigSection("hub", HubSpec, "Hub process settings.")
"""The core's own section."""


def core_sections(plugins: PluginSet | None = None) -> ConfigSections:
    """The core's sections, plus every section `plugins` (already loaded) register."""
    sections = ConfigSections(plugins.not_loaded_owner if plugins is not None else None)
    sections.add(CORE, HUB)
    if plugins is not None:
        plugins.register_config(sections)
    return sections


def plugin_sections(
    env: Mapping[str, str] = os.environ, *, entry_points: bool = True
) -> ConfigSections:
    """The sections of the plugins a hub started with `env` would load (built-ins, and
    entry points unless `entry_points` is False)."""
    from .plugins import PluginSet

    plugins = PluginSet(entry_points=entry_points, env=env)
    plugins.load()
    try:
        return core_sections(plugins)
    finally:
        plugins.unregister_all()


# --- loading -----------------------------------------------------------------------------


def user_config_path(env: Mapping[str, str] = os.environ) -> Path:
    """`$FLEETBUS_CONFIG`, else `$XDG_CONFIG_HOME/fleetbus/fleetbus.yaml` (XDG default
    `~/.config`)."""
    explicit = env.get("FLEETBUS_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    xdg = env.get("XDG_CONFIG_HOME")
    if xdg and Path(xdg).is_absolute():
        return Path(xdg) / "fleetbus" / "fleetbus.yaml"
    home = env.get("HOME")
    base = Path(home) if home else Path.home()
    return base / ".config" / "fleetbus" / "fleetbus.yaml"


@dataclass(frozen=True)
class _Source:
    label: str
    document: dict[str, Any]
    builtin: bool = False


class _UniqueKeyLoader(yaml.SafeLoader):
    """SafeLoader that rejects a key given twice in one mapping."""


def _construct_mapping(loader: _UniqueKeyLoader, node: yaml.MappingNode) -> dict[Any, Any]:
    loader.flatten_mapping(node)
    seen: set[Any] = set()
    for key_node, _ in node.value:
        key = loader.construct_object(key_node)
        try:
            duplicate = key in seen
        except TypeError:
            continue
        if duplicate:
            raise yaml.constructor.ConstructorError(
                None, None, f"duplicate key {key!r}", key_node.start_mark
            )
        seen.add(key)
    return loader.construct_mapping(node)


_UniqueKeyLoader.add_constructor(
    yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG,
    _construct_mapping,
)


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _parse(text: str, label: str, sections: Sequence[str]) -> dict[str, Any]:
    try:
        data = yaml.load(text, Loader=_UniqueKeyLoader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = exc.problem or exc.context or "unreadable"
        if exc.context and exc.context_mark and exc.problem_mark:
            start = exc.context_mark
            problem += f" ({exc.context} at line {start.line + 1}, column {start.column + 1})"
        raise ConfigError(f"{label}: {where}invalid YAML: {_one_line(problem)}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{label}: invalid YAML: {_one_line(str(exc))}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        kind = "a list" if isinstance(data, list) else f"a {type(data).__name__}"
        raise ConfigError(
            f"{label}: the top level must be a mapping of sections "
            f"({', '.join(f'{name}:' for name in sections)}), "
            f"got {kind}"
        )
    return data


def _real(path: str) -> str:
    """`path` with symlinks resolved (an editable install links to the checkout)."""
    try:
        return str(Path(path).resolve()) if Path(path).exists() else path
    except OSError:
        return path


def _read_builtins(sections: Sequence[str]) -> list[_Source]:
    package = files("fleetbus.manifests")
    sources = []
    for entry in sorted(package.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml") and entry.is_file():
            label = _real(str(entry))
            sources.append(
                _Source(
                    label, _parse(entry.read_text(encoding="utf-8"), label, sections), builtin=True
                )
            )
    return sources


def _read_user(path: Path, sections: Sequence[str], *, explicit: bool, hint: str) -> _Source | None:
    label = str(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        if explicit:
            raise ConfigError(f"{label}: no such file; {hint}") from None
        return None
    except IsADirectoryError:
        raise ConfigError(f"{label}: is a directory, not a YAML file") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{label}: not UTF-8 text ({exc.reason})") from None
    except OSError as exc:
        raise ConfigError(f"{label}: cannot read: {exc.strerror or exc}") from None
    return _Source(label, _parse(text, label, sections))


def merge(base: Mapping[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    """Deep-merge: mappings merge, lists and scalars replace, `None` removes the key."""
    out = dict(base)
    for key, value in override.items():
        if value is None:
            out.pop(key, None)
        elif isinstance(value, dict):
            current = out.get(key)
            out[key] = merge(current if isinstance(current, dict) else {}, value)
        else:
            out[key] = value
    return out


def _depth(document: Any, loc: Sequence[int | str]) -> int:
    """How many leading parts of `loc` exist in `document`."""
    depth = 0
    node = document
    for part in loc:
        found = (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node)
        )
        if not found:
            break
        node = node[part]
        depth += 1
    return depth


def _blame(sources: Sequence[_Source], loc: Sequence[int | str]) -> str:
    """The file that set the deepest part of `loc`; later files win ties."""
    best = sources[-1].label
    best_depth = -1
    for source in sources:
        depth = _depth(source.document, loc)
        if depth >= best_depth:
            best, best_depth = source.label, depth
    return best


def _unwrap(tp: Any) -> Any:
    while get_origin(tp) is Annotated:
        tp = get_args(tp)[0]
    if get_origin(tp) in (Union, types.UnionType):
        for arg in get_args(tp):
            inner = _unwrap(arg)
            if get_origin(inner) is dict or (
                isinstance(inner, type) and issubclass(inner, BaseModel)
            ):
                return inner
    return tp


def _model_at(root: type[BaseModel], loc: Sequence[int | str]) -> type[BaseModel] | None:
    """The model class found by walking `loc` from `root`, if any."""
    tp: Any = root
    for part in loc:
        tp = _unwrap(tp)
        if isinstance(tp, type) and issubclass(tp, BaseModel):
            field = tp.model_fields.get(str(part))
            if field is None:
                return None
            tp = field.annotation
        elif get_origin(tp) is dict:
            tp = get_args(tp)[1]
        else:
            return None
    tp = _unwrap(tp)
    return tp if isinstance(tp, type) and issubclass(tp, BaseModel) else None


def _dotted(loc: Sequence[int | str]) -> str:
    text = ""
    for part in loc:
        if isinstance(part, int):
            text += f"[{part}]"
        else:
            text += f".{part}" if text else str(part)
    return text or "(top level)"


def _describe(root: type[BaseModel], error: Mapping[str, Any]) -> tuple[tuple[int | str, ...], str]:
    """(location, one-line message) for one pydantic error."""
    loc: tuple[int | str, ...] = tuple(error["loc"])
    message = str(error["msg"])
    kind = error["type"]
    if kind == "value_error" and message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if loc and loc[-1] == "[key]":
        loc = loc[:-1]
        if repr(loc[-1]) not in message:  # the validator may already name the key
            message = f"invalid key {loc[-1]!r}: {message}"
    elif kind == "extra_forbidden" and loc:
        model = _model_at(root, loc[:-1])
        if model is not None:
            known = list(model.model_fields)
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            message = f"unknown key; did you mean {close[0]!r}?" if close else "unknown key"
            message += f" (known keys: {', '.join(known)})"
        else:
            message = "unknown key"
    return loc, _one_line(message)


def _config_error(
    sources: Sequence[_Source],
    sections: ConfigSections,
    root: type[BaseModel],
    exc: ValidationError,
) -> ConfigError:
    errors = exc.errors(include_url=False)
    parts: list[str] = []
    last_label = None
    for error in errors[:3]:
        loc, message = _describe(root, error)
        label = _blame(sources, loc)
        prefix = f"{label}: " if label != last_label else ""
        owner = sections.owners.get(str(loc[0])) if loc else None
        suffix = f" ({owner_text(owner)})" if owner else ""
        parts.append(f"{prefix}{_dotted(loc)}: {message}{suffix}")
        last_label = label
    text = "; ".join(parts)
    if len(errors) > 3:
        text += f" (and {len(errors) - 3} more)"
    return ConfigError(text)


def _set_aside(
    sources: Sequence[_Source], sections: ConfigSections, merged: dict[str, Any]
) -> dict[str, str]:
    """Remove the sections of plugins that are not loaded from `merged`; say why, by name."""
    ignored: dict[str, str] = {}
    for name in [key for key in merged if key not in sections.sections]:
        why = sections.not_loaded(str(name))
        if why is None:
            continue  # an unknown key: validation names it
        del merged[name]
        ignored[name] = why
        label = _blame(sources, [name])
        builtin = any(s.label == label and s.builtin for s in sources)
        log.log(
            logging.DEBUG if builtin else logging.WARNING,
            "%s: config section %r is not checked: %s",
            label,
            name,
            why,
        )
    return ignored


def load_manifest(
    user_path: Path | None = None,
    *,
    env: Mapping[str, str] = os.environ,
    sections: ConfigSections | None = None,
) -> Config:
    """Merge the built-in manifests with the user's file and validate the result.

    `sections` says which top-level sections exist and who owns them; by default those of
    the plugins a hub started with `env` would load. `user_path` (or `$FLEETBUS_CONFIG`)
    must exist; the default XDG path may be missing. Every problem raises `ConfigError`
    with one line naming the file, the key path and the plugin owning the section. A
    section of a plugin that is not loaded is set aside (`Config.ignored`), not refused.
    """
    if sections is None:
        sections = plugin_sections(env)
    try:
        names = sorted(sections.sections)
        sources = _read_builtins(names)
        if user_path is not None:
            user = _read_user(
                Path(user_path).expanduser(),
                names,
                explicit=True,
                hint="create it or name an existing file",
            )
        else:
            user = _read_user(
                user_config_path(env),
                names,
                explicit=bool(env.get("FLEETBUS_CONFIG")),
                hint="create it or unset FLEETBUS_CONFIG",
            )
        if user is not None:
            sources.append(user)
        merged: dict[str, Any] = {}
        for source in sources:
            merged = merge(merged, source.document)
        ignored = _set_aside(sources, sections, merged)
        root = sections.model()
        try:
            validated = root.model_validate(merged)
        except ValidationError as exc:
            raise _config_error(sources, sections, root, exc) from None
        values = {name: getattr(validated, name) for name in sections.sections}
        return Config(sections, values, ignored)
    except ConfigError:
        raise
    except Exception as exc:  # a bug or an odd file: still one line, never a traceback
        raise ConfigError(f"cannot load the manifest: {_one_line(str(exc)) or exc!r}") from exc


# --- JSON Schemas --------------------------------------------------------------------------


def schemas(sections: ConfigSections | None = None) -> dict[str, dict[str, Any]]:
    """JSON Schema (draft 2020-12) of the whole manifest and of each section, by file name.

    By default the sections of the core and the built-in plugins, which the package ships
    in `manifests/schema/`.
    """
    if sections is None:
        sections = plugin_sections({}, entry_points=False)
    out: dict[str, dict[str, Any]] = {
        "manifest.schema.json": {"$schema": SCHEMA_DIALECT, **sections.model().model_json_schema()}
    }
    for name, section in sections.sections.items():
        schema = section.adapter.json_schema()
        schema.setdefault("description", section.description)
        out[f"{name}.schema.json"] = {"$schema": SCHEMA_DIALECT, **schema}
    return out


def schema_text(schema: Mapping[str, Any]) -> str:
    """The canonical on-disk text of a schema."""
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def write_schemas(directory: Path) -> list[Path]:
    """Write every schema into `directory` (created if needed); return the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    written = []
    for name, schema in sorted(schemas().items()):
        path = directory / name
        path.write_text(schema_text(schema), encoding="utf-8")
        written.append(path)
    return written


def stale_schemas(directory: Path) -> list[str]:
    """Names of schema files in `directory` that are missing or differ from `schemas()`."""
    stale = []
    for name, schema in sorted(schemas().items()):
        path = directory / name
        if not path.is_file() or path.read_text(encoding="utf-8") != schema_text(schema):
            stale.append(name)
    return stale


def default_schema_dir() -> Path:
    """The `schema` directory next to the `fleetbus.manifests` sources (symlinks resolved,
    so an editable install writes into the checkout)."""
    return Path(str(files("fleetbus.manifests") / "__init__.py")).resolve().parent / "schema"


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m fleetbus.bus.manifests`: check the config, or write/check the schemas."""
    parser = argparse.ArgumentParser(prog="python -m fleetbus.bus.manifests", description=__doc__)
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--write-schemas",
        nargs="?",
        const="",
        metavar="DIR",
        help="write the JSON Schemas (default: the package's manifests/schema)",
    )
    group.add_argument(
        "--check-schemas",
        nargs="?",
        const="",
        metavar="DIR",
        help="exit 1 if the schema files are missing or out of date",
    )
    parser.add_argument("--config", type=Path, help="user manifest to validate")
    args = parser.parse_args(argv)

    if args.write_schemas is not None:
        directory = Path(args.write_schemas) if args.write_schemas else default_schema_dir()
        for path in write_schemas(directory):
            print(f"wrote {path}")
        return 0
    if args.check_schemas is not None:
        directory = Path(args.check_schemas) if args.check_schemas else default_schema_dir()
        stale = stale_schemas(directory)
        if stale:
            print(
                f"{directory}: out of date: {', '.join(stale)}; run "
                "`python -m fleetbus.bus.manifests --write-schemas`",
                file=sys.stderr,
            )
            return 1
        print(f"{directory}: schemas are current")
        return 0
    try:
        config = load_manifest(args.config)
    except StartupError as exc:  # a bad file (ConfigError), or a plugin that cannot load
        print(f"error: {exc}", file=sys.stderr)
        return 1
    for name in config:
        owner = config.owner(name)
        value = getattr(config, name)
        keys = f": {', '.join(sorted(map(str, value)))}" if isinstance(value, dict) else ""
        print(f"ok: {name}{f' ({owner_text(owner)})' if owner else ''}{keys}")
    for name, why in sorted(config.ignored.items()):
        print(f"not checked: {name}: {why}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
