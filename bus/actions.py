"""Actions: named commands with a pydantic input model, declared once and dispatched by the bus.

A plugin registers a handler with `register("hello.greet", exposed=True)`; the input and
output models come from the handler's annotations, the description from its docstring.
An optional second parameter receives the `Context`. Whether the handler is async is
decided here, once; sync handlers run in a worker thread.
"""

from __future__ import annotations

import inspect
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar, get_type_hints

from pydantic import BaseModel, ConfigDict

from .errors import StartupError
from .registrar import Registrar

if TYPE_CHECKING:
    from .hub import Hub

ACTION_NAME = re.compile(r"^[a-z][a-z0-9_]*(\.[a-z][a-z0-9_]*)+$")

Handler = Callable[..., Any]
F = TypeVar("F", bound=Handler)


class NoInput(BaseModel):
    """The input of an action that takes no arguments."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True, slots=True)
class ActionSpec:
    """Everything the bus and the front ends need to know about one action."""

    name: str
    handler: Handler
    input_model: type[BaseModel]
    output_model: type[BaseModel] | None
    description: str
    plugin: str
    exposed: bool = False
    mutating: bool = True
    destructive: bool = False
    timeout: float | None = None
    is_async: bool = True
    arity: int = 1
    field_names: frozenset[str] = field(default_factory=frozenset)
    allows_extra: bool = False
    # the input model's `validate_python`, bound once (when the model is complete): looking
    # it up on the model class on every call costs about 5% of a trivial `perform`
    validate_dict: Callable[[Any], BaseModel] | None = field(
        default=None, compare=False, repr=False
    )

    @property
    def validator(self) -> Any:
        """pydantic-core's validator of the input model (skips `model_validate`'s overhead)."""
        return self.input_model.__pydantic_validator__

    def info(self) -> dict[str, Any]:
        """The action as the action list shows it (names, flags, JSON Schemas)."""
        return {
            "name": self.name,
            "description": self.description,
            "plugin": self.plugin,
            "exposed": self.exposed,
            "mutating": self.mutating,
            "destructive": self.destructive,
            "input_schema": self.input_model.model_json_schema(),
            "output_schema": self.output_model.model_json_schema() if self.output_model else None,
        }


def _model_or_none(annotation: Any, what: str, name: str) -> type[BaseModel] | None:
    if annotation in (None, type(None), inspect.Signature.empty):
        return None
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    raise StartupError(f"action {name!r}: the {what} must be annotated with a pydantic BaseModel")


def make_spec(
    name: str,
    handler: Handler,
    *,
    plugin: str,
    exposed: bool = False,
    mutating: bool = True,
    destructive: bool = False,
    description: str | None = None,
    timeout: float | None = None,
) -> ActionSpec:
    """Inspect `handler` and build its frozen spec; mistakes are startup errors."""
    if not ACTION_NAME.match(name):
        raise StartupError(
            f"plugin {plugin!r}: action name {name!r} must look like 'service.verb' "
            "(lowercase letters, digits, underscores, dot-separated)"
        )
    func = inspect.unwrap(handler)
    try:
        hints = get_type_hints(func)
    except Exception as e:  # a NameError in a string annotation, say
        raise StartupError(
            f"action {name!r}: cannot read its annotations: {e}; define its models at module "
            "level (with `from __future__ import annotations` annotations are looked up there)"
        ) from e
    params = list(inspect.signature(func).parameters.values())
    if len(params) > 2 or any(
        p.kind not in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) for p in params
    ):
        raise StartupError(f"action {name!r}: a handler takes (input) or (input, context)")
    input_model: type[BaseModel] = NoInput
    if params:
        model = _model_or_none(hints.get(params[0].name, inspect.Signature.empty), "input", name)
        if model is None:
            raise StartupError(
                f"action {name!r}: annotate the first parameter with its input model"
            )
        input_model = model
    output_model = _model_or_none(hints.get("return", None), "return value", name)
    doc = description if description is not None else inspect.getdoc(func) or ""
    names = set()
    for fname, finfo in input_model.model_fields.items():
        names.add(fname)
        if finfo.alias:
            names.add(finfo.alias)
    return ActionSpec(
        name=name,
        handler=handler,
        input_model=input_model,
        output_model=output_model,
        description=doc.strip(),
        plugin=plugin,
        exposed=exposed,
        mutating=mutating,
        destructive=destructive,
        timeout=timeout,
        is_async=inspect.iscoroutinefunction(func),
        arity=len(params),
        field_names=frozenset(names),
        allows_extra=input_model.model_config.get("extra") == "allow",
        # a model with unresolved forward references is rebuilt on first use: look it up then
        validate_dict=input_model.__pydantic_validator__.validate_python
        if input_model.__pydantic_complete__
        else None,
    )


class ActionRegistrar(Registrar):
    """The `register` object a plugin's `register_actions(register)` hook receives.

    Use it as a decorator factory::

        @register("hello.greet", exposed=True)
        async def greet(req: Greet) -> Greeting: ...
    """

    def __init__(
        self, plugin: str, sink: Callable[[ActionSpec], None], hub: Hub | None = None
    ) -> None:
        super().__init__(plugin, hub)
        self._sink = sink

    def __call__(
        self,
        name: str,
        *,
        exposed: bool = False,
        mutating: bool = True,
        destructive: bool = False,
        description: str | None = None,
        timeout: float | None = None,
    ) -> Callable[[F], F]:
        def decorator(handler: F) -> F:
            spec = make_spec(
                name,
                handler,
                plugin=self.plugin,
                exposed=exposed,
                mutating=mutating,
                destructive=destructive,
                description=description,
                timeout=timeout,
            )
            self._sink(spec)
            return handler

        return decorator
