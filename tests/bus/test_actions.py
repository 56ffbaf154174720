"""Actions on the bus: validation, errors, context, sync handlers, timeouts, the action list."""

from __future__ import annotations

import threading
from typing import Any

import anyio
import pytest
from pydantic import BaseModel, Field

from fleetbus.bus import (
    ActionFailed,
    ActionNotFound,
    ActionTimeout,
    Bus,
    Context,
    InvalidInput,
    Refused,
    StartupError,
)
from fleetbus.bus.actions import ActionRegistrar, make_spec
from fleetbus.bus.context import current_context

pytestmark = pytest.mark.anyio


class Greet(BaseModel):
    name: str = Field(description="Who to greet.")
    times: int = Field(1, ge=1, le=3)


class Greeting(BaseModel):
    text: str


class Nested(BaseModel):
    greet: Greet


def register(bus: Bus, plugin: str = "test") -> ActionRegistrar:
    return ActionRegistrar(plugin, bus.add_action)


async def test_perform_validates_and_returns_the_output_model() -> None:
    async with Bus() as bus:

        @register(bus)("hello.greet", exposed=True)
        async def greet(req: Greet) -> Greeting:
            """Greet someone by name."""
            return Greeting(text=" ".join([f"hello {req.name}"] * req.times))

        result = await bus.perform("hello.greet", {"name": "ada", "times": 2})
        assert result == Greeting(text="hello ada hello ada")
        spec = bus.action("hello.greet")
        assert spec.description == "Greet someone by name."
        assert spec.input_model is Greet and spec.output_model is Greeting


async def test_invalid_input_names_every_bad_field_with_its_path() -> None:
    async with Bus() as bus:

        @register(bus)("hello.nested")
        async def nested(req: Nested) -> None:
            return None

        with pytest.raises(InvalidInput) as err:
            await bus.perform("hello.nested", {"greet": {"times": 9}})
        fields = {e["field"] for e in err.value.errors}
        assert fields == {"greet.name", "greet.times"}
        assert "greet.name: Field required" in str(err.value)
        assert str(err.value).startswith("hello.nested: invalid input:")


async def test_unknown_fields_are_refused_not_ignored() -> None:
    async with Bus() as bus:

        @register(bus)("hello.greet")
        async def greet(req: Greet) -> Greeting:
            return Greeting(text=req.name)

        with pytest.raises(InvalidInput) as err:
            await bus.perform("hello.greet", {"name": "ada", "nmae": "x"})
        assert err.value.errors[0]["field"] == "nmae"
        assert "expected: name, times" in str(err.value)


async def test_non_object_input_is_invalid() -> None:
    async with Bus() as bus:

        @register(bus)("hello.greet")
        async def greet(req: Greet) -> Greeting:
            return Greeting(text=req.name)

        with pytest.raises(InvalidInput, match="expected a JSON object, got list"):
            await bus.perform("hello.greet", [1, 2])


async def test_unknown_action_names_the_action() -> None:
    async with Bus() as bus:
        with pytest.raises(ActionNotFound) as err:
            await bus.perform("nope.nothing", {})
        assert err.value.name == "nope.nothing"
        assert "'nope.nothing'" in str(err.value)


async def test_handler_failure_is_action_failed_chained_to_its_cause() -> None:
    async with Bus() as bus:

        @register(bus)("hello.boom")
        async def boom(req: Greet) -> Greeting:
            raise ValueError("the wheel came off")

        with pytest.raises(ActionFailed) as err:
            await bus.perform("hello.boom", {"name": "ada"})
        assert isinstance(err.value.__cause__, ValueError)
        assert str(err.value) == "hello.boom failed: ValueError: the wheel came off"


async def test_a_refusal_raised_on_purpose_passes_through_unchanged() -> None:
    async with Bus() as bus:

        @register(bus)("hello.frozen")
        async def frozen() -> None:
            raise Refused("frozen: run `runner.start` first")

        with pytest.raises(Refused, match="frozen"):
            await bus.perform("hello.frozen")


async def test_wrong_output_is_the_handlers_fault() -> None:
    async with Bus() as bus:

        @register(bus)("hello.liar")
        async def liar(req: Greet) -> Greeting:
            return {"txt": "oops"}  # type: ignore[return-value]

        with pytest.raises(ActionFailed, match="does not match Greeting"):
            await bus.perform("hello.liar", {"name": "ada"})


async def test_dict_output_is_validated_into_the_model() -> None:
    async with Bus() as bus:

        @register(bus)("hello.dict")
        async def as_dict(req: Greet) -> Greeting:
            return {"text": req.name}  # type: ignore[return-value]

        assert await bus.perform("hello.dict", {"name": "ada"}) == Greeting(text="ada")


async def test_sync_handlers_run_in_a_worker_thread() -> None:
    loop_thread = threading.get_ident()
    seen: list[int] = []
    async with Bus() as bus:

        @register(bus)("hello.sync")
        def sync(req: Greet, ctx: Context) -> Greeting:
            seen.append(threading.get_ident())
            assert current_context.get() is ctx
            return Greeting(text=f"sync {req.name}")

        assert (await bus.perform("hello.sync", {"name": "ada"})).text == "sync ada"
    assert seen and seen[0] != loop_thread


async def test_context_travels_and_nested_calls_get_a_child() -> None:
    contexts: dict[str, Context] = {}
    async with Bus() as bus:
        reg = register(bus)

        @reg("hello.inner")
        async def inner(req: Greet, ctx: Context) -> None:
            contexts["inner"] = ctx

        @reg("hello.outer")
        async def outer(req: Greet, ctx: Context) -> None:
            contexts["outer"] = ctx
            await bus.perform("hello.inner", {"name": req.name})

        top = Context(caller="mcp:session-1", origin={"session": "s1"})
        await bus.perform("hello.outer", {"name": "ada"}, context=top)
    assert contexts["outer"] is top
    assert contexts["inner"].parent_id == top.correlation_id
    assert contexts["inner"].caller == "mcp:session-1"
    assert contexts["inner"].origin == {"session": "s1"}
    assert contexts["inner"].correlation_id != top.correlation_id


async def test_context_round_trips_through_a_dict() -> None:
    ctx = Context(caller="cli", parent_id="p1", origin={"session": "abc"})
    again = Context.from_dict(ctx.to_dict())
    assert (again.correlation_id, again.caller, again.parent_id, dict(again.origin)) == (
        ctx.correlation_id,
        "cli",
        "p1",
        {"session": "abc"},
    )
    with pytest.raises(TypeError):
        Context.from_dict({"origin": ["not", "a", "mapping"]})


def test_a_context_compares_by_value_and_keeps_its_id() -> None:
    ctx = Context(caller="cli", origin={"session": "abc"})
    other = Context(caller="cli", origin={"session": "abc"})
    assert ctx.correlation_id == ctx.correlation_id  # formatted once, the same every time
    assert ctx != other and ctx.correlation_id != other.correlation_id
    copy = Context(ctx.correlation_id, "cli", None, {"session": "abc"})
    assert copy == ctx and repr(copy) == repr(ctx)
    assert repr(ctx).startswith(f"Context(correlation_id={ctx.correlation_id!r}, caller='cli'")
    reports: list[tuple[float | None, str]] = []
    job = ctx.with_job("j1", lambda p, m: reports.append((p, m)))
    assert (job.correlation_id, job.caller, job.origin, job.job_id) == (
        ctx.correlation_id,
        "cli",
        {"session": "abc"},
        "j1",
    )
    job.report_progress(0.5, "half")
    ctx.report_progress(1.0, "no job: ignored")
    assert reports == [(0.5, "half")]
    child = ctx.child(caller="run:r1")
    assert (child.parent_id, child.caller, child.origin) == (
        ctx.correlation_id,
        "run:r1",
        {"session": "abc"},
    )
    with pytest.raises(TypeError):
        hash(ctx)


async def test_timeout_raises_action_timeout() -> None:
    async with Bus() as bus:
        started = anyio.Event()

        @register(bus)("hello.slow", timeout=0.05)
        async def slow() -> None:
            started.set()
            await anyio.Event().wait()  # never set

        with pytest.raises(ActionTimeout, match=r"within 0\.05s"):
            await bus.perform("hello.slow")
        assert started.is_set()
        assert bus.inflight == 0


async def test_a_handler_without_input_takes_an_empty_object() -> None:
    async with Bus() as bus:

        @register(bus)("hello.noop", mutating=False)
        async def noop() -> Greeting:
            return Greeting(text="ok")

        assert (await bus.perform("hello.noop")).text == "ok"
        assert (await bus.perform("hello.noop", {})).text == "ok"
        with pytest.raises(InvalidInput):
            await bus.perform("hello.noop", {"x": 1})


async def test_duplicate_action_names_both_plugins() -> None:
    async with Bus() as bus:

        async def a(req: Greet) -> None: ...

        register(bus, "first")("hello.greet")(a)
        with pytest.raises(StartupError) as err:
            register(bus, "second")("hello.greet")(a)
        assert "'first'" in str(err.value) and "'second'" in str(err.value)


@pytest.mark.parametrize(
    ("name", "handler", "message"),
    [
        ("Bad Name", lambda req: None, "must look like 'service.verb'"),
        ("hello.untyped", lambda req: None, "annotate the first parameter"),
        ("hello.three", lambda a, b, c: None, r"takes \(input\) or \(input, context\)"),
    ],
)
def test_bad_declarations_are_startup_errors(name: str, handler: Any, message: str) -> None:
    with pytest.raises(StartupError, match=message):
        make_spec(name, handler, plugin="test")


def test_non_model_annotations_are_refused() -> None:
    def handler(req: int) -> None: ...

    with pytest.raises(StartupError, match="pydantic BaseModel"):
        make_spec("hello.int", handler, plugin="test")


async def test_action_list_carries_flags_and_json_schemas() -> None:
    async with Bus() as bus:
        reg = register(bus, "hello")

        @reg("hello.greet", exposed=True, mutating=False)
        async def greet(req: Greet) -> Greeting:
            """Greet someone."""
            return Greeting(text="")

        @reg("hello.kill", exposed=True, destructive=True)
        async def kill() -> None:
            """Stop everything."""

        @reg("hello.hidden")
        async def hidden() -> None: ...

        listed = bus.list_actions()
        assert [a["name"] for a in listed] == ["hello.greet", "hello.hidden", "hello.kill"]
        greet_info = listed[0]
        assert greet_info["input_schema"]["required"] == ["name"]
        assert greet_info["input_schema"]["properties"]["name"]["description"] == "Who to greet."
        assert greet_info["output_schema"]["properties"]["text"]["type"] == "string"
        assert greet_info["mutating"] is False and greet_info["exposed"] is True
        assert listed[2]["destructive"] is True and listed[2]["output_schema"] is None
        assert [a["name"] for a in bus.list_actions(exposed_only=True)] == [
            "hello.greet",
            "hello.kill",
        ]
