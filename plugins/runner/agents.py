"""The runner's agents: how each agent is run (argv template, models, lanes, rates, usage).

The models of the `agents` manifest section (registered in config.py); pure data and
validation, no I/O.
"""

from __future__ import annotations

import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    WithJsonSchema,
    field_validator,
    model_validator,
)

PLACEHOLDERS: tuple[str, ...] = ("prompt", "prompt_file", "workspace", "model", "python")
"""Names that may appear as a whole argument `{name}` in `command` and `model_args`."""

AGENT_NAME_PATTERN = r"^[a-z0-9][a-z0-9_-]{0,63}$"
ENV_NAME_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*$"
RESET_PATTERN = r"^([01][0-9]|2[0-3]):[0-5][0-9]$"

_WHOLE_PLACEHOLDER = re.compile(r"\{([a-z_]+)\}")  # use with fullmatch
_EMBEDDED_PLACEHOLDER = re.compile(r"\{(" + "|".join(PLACEHOLDERS) + r")\}")
_KNOWN = ", ".join("{" + name + "}" for name in PLACEHOLDERS)


def _agent_name(value: str) -> str:
    if not re.fullmatch(AGENT_NAME_PATTERN, value):
        raise ValueError(
            f"invalid agent name {value!r}: use 1-64 lowercase letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )
    return value


AgentName = Annotated[
    str,
    AfterValidator(_agent_name),
    WithJsonSchema({"type": "string", "pattern": AGENT_NAME_PATTERN}),
]
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
