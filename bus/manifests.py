"""Manifests: the declarative YAML that defines agents, dispatch limits and hub settings.

The built-in `fleetbus.manifests/*.yaml` files are deep-merged in name order, then the
user's file (`user_config_path()`) on top: mappings merge, lists and scalars replace, and
`null` removes a key. The merged document is validated by the pydantic models below; any
problem becomes one `ConfigError` line naming the file and the dotted key path.

`python -m fleetbus.bus.manifests --write-schemas` regenerates `manifests/schema/*.json`.
"""

from __future__ import annotations

import argparse
import difflib
import json
import os
import re
import sys
import types
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from .errors import ConfigError

PLACEHOLDERS: tuple[str, ...] = ("prompt", "prompt_file", "workspace", "model", "python")
"""Names that may appear as a whole argument `{name}` in `command` and `model_args`."""

AGENT_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
RESET_PATTERN = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"
SCHEMA_DIALECT = "https://json-schema.org/draft/2020-12/schema"

_WHOLE_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")  # use with fullmatch
_EMBEDDED_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")
_KNOWN = ", ".join("{" + name + "}" for name in PLACEHOLDERS)

AgentName = Annotated[str, StringConstraints(pattern=AGENT_NAME_PATTERN)]
PositiveInt = Annotated[int, Field(ge=1)]


def _placeholder(arg: str) -> str | None:
    """The placeholder name if `arg` is exactly `{name}` for a known name, else None."""
    match = _WHOLE_PLACEHOLDER.fullmatch(arg)
    return match.group(1) if match and match.group(1) in PLACEHOLDERS else None


def _check_argv(value: Any, what: str) -> Any:
    """Reject shell strings and YAML's unquoted `{prompt}` mappings; stringify numbers."""
    if isinstance(value, str):
        raise ValueError(
            f"{what} must be a list of arguments (argv), not a shell string: "
            f"write it as a YAML list, e.g. [{', '.join(value.split()[:2]) or 'program'}]"
        )
    if not isinstance(value, list):
        return value
    items: list[Any] = []
    for item in value:
        if isinstance(item, dict) and len(item) == 1:
            ((key, val),) = item.items()
            if val is None and isinstance(key, str):
                raise ValueError(
                    f"quote placeholders in YAML: write '{{{key}}}' — an unquoted "
                    f"{{{key}}} is read as a mapping"
                )
        if isinstance(item, int | float) and not isinstance(item, bool):
            item = str(item)
        items.append(item)
    return items


def _check_placeholders(argv: list[str], what: str) -> list[str]:
    """Placeholders must be known and must fill a whole argument."""
    for arg in argv:
        whole = _WHOLE_PLACEHOLDER.fullmatch(arg)
        if whole:
            if whole.group(1) not in PLACEHOLDERS:
                raise ValueError(
                    f"unknown placeholder {arg!r} in {what}; known placeholders: {_KNOWN}"
                )
            continue
        embedded = _EMBEDDED_PLACEHOLDER.search(arg)
        if embedded:
            before, after = arg[: embedded.start()].rstrip("="), arg[embedded.end() :]
            example = f", e.g. {before!r}, {embedded.group(0)!r}" if before and not after else ""
            raise ValueError(
                f"placeholders replace whole arguments only: split {arg!r} into two "
                f"arguments{example}"
            )
    return argv


def _check_regex(value: str | None) -> str | None:
    if value is None:
        return None
    try:
        re.compile(value)
    except re.error as exc:
        raise ValueError(f"not a valid regular expression: {exc}") from None
    return value


class AgentRates(BaseModel):
    """Rate rules for one agent's lane: a daily run limit and delays between starts."""

    model_config = ConfigDict(extra="forbid")

    reset_utc: str = Field(
        "06:00",
        description="UTC time of day (HH:MM, 24-hour) when the daily limit resets.",
        json_schema_extra={"pattern": RESET_PATTERN},
    )
    daily_limit: int | None = Field(
        None, ge=1, description="Runs allowed per day (from reset_utc); null for no limit."
    )
    min_delay: float = Field(0, ge=0, description="Minimum seconds between two starts, always.")
    sustained_delay: float = Field(
        0,
        ge=0,
        description="Seconds between starts outside the burst window (paces a full day's use).",
    )
    burst_window: float = Field(
        0,
        ge=0,
        description="Seconds before the daily reset during which burst_delay replaces "
        "sustained_delay (spend what is left of the quota); 0 disables.",
    )
    burst_delay: float = Field(
        0, ge=0, description="Seconds between starts inside the burst window."
    )

    @field_validator("reset_utc")
    @classmethod
    def _reset_is_hh_mm(cls, value: str) -> str:
        if not re.fullmatch(RESET_PATTERN, value):
            raise ValueError(f"must be HH:MM in 24-hour UTC, e.g. '06:00' (got {value!r})")
        return value


class UsageReading(BaseModel):
    """Usage read from a run's output; fields the agent did not report are None."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    input_tokens: int | None = Field(None, description="Input (prompt) tokens.")
    output_tokens: int | None = Field(None, description="Output (completion) tokens.")
    total_tokens: int | None = Field(None, description="Total tokens, as the agent reported.")
    cost_usd: float | None = Field(None, description="Cost in US dollars.")

    @property
    def tokens(self) -> int | None:
        """Total tokens: the reported total, else input + output when either is known."""
        if self.total_tokens is not None:
            return self.total_tokens
        if self.input_tokens is None and self.output_tokens is None:
            return None
        return (self.input_tokens or 0) + (self.output_tokens or 0)


class UsageSpec(BaseModel):
    """Regexes that read usage from a run's output (stdout and stderr together).

    Each regex's first capture group (named or not) holds the number; the last match in
    the output wins, and `,` / `_` digit separators are ignored.
    """

    model_config = ConfigDict(extra="forbid")

    input_tokens: str | None = Field(None, description="Regex capturing input tokens.")
    output_tokens: str | None = Field(None, description="Regex capturing output tokens.")
    total_tokens: str | None = Field(None, description="Regex capturing total tokens.")
    cost_usd: str | None = Field(None, description="Regex capturing the cost in US dollars.")

    @field_validator("input_tokens", "output_tokens", "total_tokens", "cost_usd")
    @classmethod
    def _one_group(cls, value: str | None) -> str | None:
        if value is None:
            return None
        _check_regex(value)
        if re.compile(value).groups < 1:
            raise ValueError("the regex needs a capture group around the number, e.g. (\\d+)")
        return value

    def extract(self, output: str) -> UsageReading:
        """Read usage from `output`; a field whose regex does not match stays None."""
        found: dict[str, float | int] = {}
        for name in ("input_tokens", "output_tokens", "total_tokens", "cost_usd"):
            pattern: str | None = getattr(self, name)
            if pattern is None:
                continue
            matches = list(re.finditer(pattern, output))
            if not matches:
                continue
            text = (matches[-1].group(1) or "").replace(",", "").replace("_", "").strip()
            try:
                found[name] = float(text) if name == "cost_usd" else int(float(text))
            except ValueError:
                continue
        return UsageReading.model_validate(found)


class AgentSpec(BaseModel):
    """One kind of agent: how to start it, which models it takes, and its lane's limits."""

    model_config = ConfigDict(extra="forbid")

    command: list[str] = Field(
        min_length=1,
        description=(
            "argv template, never a shell string. Placeholders {prompt}, {prompt_file}, "
            "{workspace}, {python} replace whole arguments only."
        ),
    )
    prompt: Literal["arg", "stdin", "file"] = Field(
        "arg",
        description=(
            "How the prompt reaches the agent: 'arg' ({prompt} in command), 'stdin', or "
            "'file' ({prompt_file} in command)."
        ),
    )
    context: Literal["prompt", "file", "none"] = Field(
        "prompt",
        description=(
            "How a followup run gets the previous run's context (its status, question and "
            "output tail): 'prompt' prefixes it to the prompt, 'file' writes it to a file "
            "named by $FLEETBUS_CONTEXT_FILE (the prompt stays as sent, e.g. for scripts), "
            "'none' passes only $FLEETBUS_PREVIOUS_RUN_ID."
        ),
    )
    model_args: list[str] = Field(
        default_factory=list,
        description="Arguments appended only when a model is chosen, e.g. ['-m', '{model}'].",
    )
    models: list[str] = Field(
        default_factory=list, description="Allowed models; empty allows any model."
    )
    default_model: str | None = Field(
        None, description="Model used when a task names none; must be in models if set."
    )
    capabilities: list[str] = Field(
        default_factory=list, description="Labels a task may require (e.g. code, review)."
    )
    concurrency: PositiveInt | dict[str, PositiveInt] = Field(
        1,
        description=(
            "Concurrent runs: an integer, or a mapping with optional key 'total' plus "
            "per-model limits."
        ),
    )
    rates: AgentRates = Field(
        default_factory=AgentRates, description="Daily limit, delays and reset time."
    )
    env: list[str] = Field(
        default_factory=list,
        description="Environment variables passed through to the agent; all others are dropped.",
        json_schema_extra={"items": {"type": "string", "pattern": ENV_NAME_PATTERN}},
    )
    timeout_minutes: float = Field(60, gt=0, description="A run is killed after this long.")
    usage: UsageSpec | None = Field(None, description="How to read usage from the output.")
    usage_limit_pattern: str | None = Field(
        None,
        description="Regex that, when it matches the output, means the agent hit a usage limit.",
    )
    description: str = Field("", description="What this agent is, for people and routing.")

    @field_validator("command", mode="before")
    @classmethod
    def _command_is_argv(cls, value: Any) -> Any:
        return _check_argv(value, "command")

    @field_validator("model_args", mode="before")
    @classmethod
    def _model_args_is_argv(cls, value: Any) -> Any:
        return _check_argv(value, "model_args")

    @field_validator("command")
    @classmethod
    def _command_placeholders(cls, value: list[str]) -> list[str]:
        _check_placeholders(value, "command")
        if not value[0]:
            raise ValueError("the program (first argument) is empty")
        if "{model}" in value:
            raise ValueError(
                "{model} belongs in model_args, which are added only when a model is chosen"
            )
        return value

    @field_validator("model_args")
    @classmethod
    def _model_args_placeholders(cls, value: list[str]) -> list[str]:
        _check_placeholders(value, "model_args")
        for name in ("{prompt}", "{prompt_file}"):
            if name in value:
                raise ValueError(f"{name} belongs in command, not model_args")
        return value

    @field_validator("env")
    @classmethod
    def _env_names(cls, value: list[str]) -> list[str]:
        for name in value:
            if not re.fullmatch(ENV_NAME_PATTERN, name):
                raise ValueError(f"{name!r} is not an environment variable name")
        return value

    @field_validator("usage_limit_pattern")
    @classmethod
    def _limit_regex(cls, value: str | None) -> str | None:
        return _check_regex(value)

    @field_validator("concurrency", mode="before")
    @classmethod
    def _concurrency_shape(cls, value: Any) -> Any:
        def bad(what: Any) -> bool:
            return isinstance(what, bool) or not isinstance(what, int) or what < 1

        if isinstance(value, dict):
            for key, limit in value.items():
                if not isinstance(key, str) or not key:
                    raise ValueError(f"model names must be strings (got {key!r})")
                if bad(limit):
                    raise ValueError(f"limit for {key!r} must be an integer >= 1 (got {limit!r})")
            return value
        if bad(value):
            raise ValueError(
                f"must be an integer >= 1, or a mapping like {{total: 3, gpt-5: 2}} (got {value!r})"
            )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> AgentSpec:
        if self.prompt == "arg" and "{prompt}" not in self.command:
            raise ValueError("prompt: arg needs a '{prompt}' argument in command")
        if self.prompt == "file" and "{prompt_file}" not in self.command:
            raise ValueError("prompt: file needs a '{prompt_file}' argument in command")
        if self.prompt == "stdin" and "{prompt}" in self.command:
            raise ValueError(
                "prompt: stdin feeds the prompt on stdin; remove '{prompt}' from command "
                "or use prompt: arg"
            )
        if (
            self.models
            and self.default_model is not None
            and (self.default_model not in self.models)
        ):
            raise ValueError(
                f"default_model {self.default_model!r} is not in models: {', '.join(self.models)}"
            )
        _, per_model = self.limits()
        unknown = [m for m in per_model if self.models and m not in self.models]
        if unknown:
            raise ValueError(
                f"concurrency names model {unknown[0]!r}, which is not in models: "
                f"{', '.join(self.models)}"
            )
        return self

    def limits(self) -> tuple[int | None, dict[str, int]]:
        """(total limit or None for no agent-wide limit, per-model limits)."""
        if isinstance(self.concurrency, int):
            return self.concurrency, {}
        per_model = {k: v for k, v in self.concurrency.items() if k != "total"}
        return self.concurrency.get("total"), per_model

    def resolve_model(self, requested: str | None) -> str | None:
        """The model to run: `requested` if allowed, else `default_model`.

        Raises ValueError when `requested` is not among a non-empty `models`.
        """
        if requested is None:
            return self.default_model
        if self.models and requested not in self.models:
            raise ValueError(
                f"model {requested!r} is not allowed; choose one of {', '.join(self.models)}"
            )
        return requested

    def render(
        self,
        prompt_value: str | None,
        prompt_file: str | None,
        workspace: str,
        model: str | None,
        python: str,
    ) -> list[str]:
        """The argv to run: whole-argument placeholders substituted, `model_args` appended
        (rendered) only when `model` is not None. Raises ValueError for a placeholder whose
        value is None."""
        values = {
            "prompt": prompt_value,
            "prompt_file": prompt_file,
            "workspace": workspace,
            "model": model,
            "python": python,
        }

        def substitute(arg: str) -> str:
            name = _placeholder(arg)
            if name is None:
                return arg
            value = values[name]
            if value is None:
                raise ValueError(f"{arg} is in the command but no value was given for it")
            return value

        argv = [substitute(arg) for arg in self.command]
        if model is not None:
            argv.extend(substitute(arg) for arg in self.model_args)
        return argv


class SessionSpec(BaseModel):
    """How a workspace's session queue treats a prompt that arrives while a run is active."""

    model_config = ConfigDict(extra="forbid")

    mode: Literal["queue", "followup", "interrupt"] = Field(
        "queue",
        description="Default session_mode: queue (wait), followup (run after it, with its "
        "context) or interrupt (cancel the active run and start the new one).",
    )
    cap: int = Field(10, ge=1, description="Most prompts waiting in one workspace's queue.")
    drop: Literal["old", "new"] = Field(
        "old",
        description="When the queue is full: drop the oldest waiting prompt, or refuse the new one.",
    )
    debounce_ms: int = Field(
        800,
        ge=0,
        description="Prompts that arrive within this many milliseconds of each other while "
        "the workspace is busy are merged into one run.",
    )
    max_concurrent: int = Field(1, ge=1, description="Runs active at once in one workspace.")


class BreakerSpec(BaseModel):
    """The failure circuit breaker of each agent's pool."""

    model_config = ConfigDict(extra="forbid")

    failures: int = Field(3, ge=1, description="Fast failures that trip the breaker.")
    fast_failure_s: float = Field(
        60,
        gt=0,
        description="A failed run counts as fast when it ended within this many seconds of its start.",
    )
    window_s: float = Field(
        600, gt=0, description="The fast failures must fall within this many seconds."
    )
    backoff_minutes: float = Field(30, gt=0, description="How long a tripped pool backs off.")


class DispatchSpec(BaseModel):
    """Where workspaces live and how many runs may go at once."""

    model_config = ConfigDict(extra="forbid")

    workspace_root: Path | None = Field(
        None,
        description="Directory holding workspaces; null means $FLEETBUS_HOME/workspaces. "
        "'~' is expanded.",
    )
    total_concurrency: int = Field(8, ge=1, description="Runs allowed at once, all agents.")
    start_frozen: bool = Field(
        False, description="Start the hub frozen: queued runs wait for runner.start."
    )
    drain_interval: float = Field(
        30, gt=0, description="Seconds between timer-driven drains of the queue."
    )
    kill_grace: float = Field(
        30, ge=0, description="Seconds between SIGTERM and SIGKILL when a run is killed."
    )
    max_prompt_bytes: int = Field(
        1048576, ge=1, description="Largest prompt accepted, in bytes (UTF-8)."
    )
    session: SessionSpec = Field(
        default_factory=SessionSpec, description="Session queue of each workspace."
    )
    breaker: BreakerSpec = Field(
        default_factory=BreakerSpec, description="Failure circuit breaker of each agent's pool."
    )

    @field_validator("workspace_root")
    @classmethod
    def _expand_user(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    def resolved_workspace_root(self, home: Path) -> Path:
        """`workspace_root`, or `home/workspaces` when unset."""
        return self.workspace_root if self.workspace_root is not None else home / "workspaces"


class HubSpec(BaseModel):
    """Settings of the hub process."""

    model_config = ConfigDict(extra="forbid")

    idle_timeout: float = Field(
        600,
        ge=0,
        description="Seconds without clients or work after which the hub exits; 0 disables.",
    )


class Manifest(BaseModel):
    """The whole configuration: agents, dispatch, hub and third-party plugin sections."""

    model_config = ConfigDict(extra="forbid")

    agents: dict[AgentName, AgentSpec] = Field(
        default_factory=dict, description="Agents by name (lowercase letters, digits, - and _)."
    )
    dispatch: DispatchSpec = Field(
        default_factory=DispatchSpec, description="Workspace root and global limits."
    )
    hub: HubSpec = Field(default_factory=HubSpec, description="Hub process settings.")
    plugins: dict[str, dict[str, Any]] = Field(
        default_factory=dict,
        description="Free-form configuration sections for third-party plugins, by plugin name.",
    )


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


def _parse(text: str, label: str) -> dict[str, Any]:
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
            f"{label}: the top level must be a mapping (keys like agents:, dispatch:, hub:), "
            f"got {kind}"
        )
    return data


def _real(path: str) -> str:
    """`path` with symlinks resolved (an editable install links to the checkout)."""
    try:
        return str(Path(path).resolve()) if Path(path).exists() else path
    except OSError:
        return path


def _read_builtins() -> list[_Source]:
    package = files("fleetbus.manifests")
    sources = []
    for entry in sorted(package.iterdir(), key=lambda e: e.name):
        if entry.name.endswith(".yaml") and entry.is_file():
            label = _real(str(entry))
            sources.append(_Source(label, _parse(entry.read_text(encoding="utf-8"), label)))
    return sources


def _read_user(path: Path, *, explicit: bool, hint: str) -> _Source | None:
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
    return _Source(label, _parse(text, label))


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


def _model_at(loc: Sequence[int | str]) -> type[BaseModel] | None:
    """The model class found by walking `loc` from `Manifest`, if any."""
    tp: Any = Manifest
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


def _describe(error: Mapping[str, Any]) -> tuple[tuple[int | str, ...], str]:
    """(location, one-line message) for one pydantic error."""
    loc: tuple[int | str, ...] = tuple(error["loc"])
    message = str(error["msg"])
    kind = error["type"]
    if kind == "value_error" and message.startswith("Value error, "):
        message = message[len("Value error, ") :]
    if loc and loc[-1] == "[key]":
        loc = loc[:-1]
        if len(loc) == 2 and loc[0] == "agents":
            message = (
                f"invalid agent name {loc[1]!r}: use 1-64 lowercase letters, digits, '-' or "
                "'_', starting with a letter or digit"
            )
        else:
            message = f"invalid key {loc[-1]!r}: {message}"
    elif kind == "extra_forbidden" and loc:
        model = _model_at(loc[:-1])
        if model is not None:
            known = list(model.model_fields)
            close = difflib.get_close_matches(str(loc[-1]), known, n=1)
            message = f"unknown key; did you mean {close[0]!r}?" if close else "unknown key"
            message += f" (known keys: {', '.join(known)})"
        else:
            message = "unknown key"
    return loc, _one_line(message)


def _config_error(sources: Sequence[_Source], exc: ValidationError) -> ConfigError:
    errors = exc.errors(include_url=False)
    parts: list[str] = []
    last_label = None
    for error in errors[:3]:
        loc, message = _describe(error)
        label = _blame(sources, loc)
        prefix = f"{label}: " if label != last_label else ""
        parts.append(f"{prefix}{_dotted(loc)}: {message}")
        last_label = label
    text = "; ".join(parts)
    if len(errors) > 3:
        text += f" (and {len(errors) - 3} more)"
    return ConfigError(text)


def load_manifest(
    user_path: Path | None = None, *, env: Mapping[str, str] = os.environ
) -> Manifest:
    """Merge the built-in manifests with the user's file and validate the result.

    `user_path` (or `$FLEETBUS_CONFIG`) must exist; the default XDG path may be missing.
    Every problem raises `ConfigError` with one line naming the file and the key path.
    """
    try:
        sources = _read_builtins()
        if user_path is not None:
            user = _read_user(
                Path(user_path).expanduser(),
                explicit=True,
                hint="create it or name an existing file",
            )
        else:
            user = _read_user(
                user_config_path(env),
                explicit=bool(env.get("FLEETBUS_CONFIG")),
                hint="create it or unset FLEETBUS_CONFIG",
            )
        if user is not None:
            sources.append(user)
        merged: dict[str, Any] = {}
        for source in sources:
            merged = merge(merged, source.document)
        try:
            return Manifest.model_validate(merged)
        except ValidationError as exc:
            raise _config_error(sources, exc) from None
    except ConfigError:
        raise
    except Exception as exc:  # a bug or an odd file: still one line, never a traceback
        raise ConfigError(f"cannot load the manifest: {_one_line(str(exc)) or exc!r}") from exc


# --- JSON Schemas --------------------------------------------------------------------------

_SCHEMA_MODELS: dict[str, type[BaseModel]] = {
    "manifest.schema.json": Manifest,
    "agent.schema.json": AgentSpec,
    "dispatch.schema.json": DispatchSpec,
    "hub.schema.json": HubSpec,
}


def schemas() -> dict[str, dict[str, Any]]:
    """JSON Schema (draft 2020-12) of every manifest kind, by file name."""
    out: dict[str, dict[str, Any]] = {}
    for name, model in _SCHEMA_MODELS.items():
        out[name] = {"$schema": SCHEMA_DIALECT, **model.model_json_schema()}
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
        manifest = load_manifest(args.config)
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"ok: {len(manifest.agents)} agents: {', '.join(sorted(manifest.agents))}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
