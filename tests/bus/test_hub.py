"""The hub in-process: plugin lifecycle, hooks, and the IPC socket spoken by HubClient."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Generator
from pathlib import Path
from typing import Any, ClassVar

import anyio
import pytest
from pydantic import BaseModel, ConfigDict, Field
from sqlite_utils import Database, Migrations

from fleetbus.bus import (
    ActionNotFound,
    ConfigError,
    ConfigRegistrar,
    ConfigSection,
    Context,
    InvalidInput,
    Message,
    Query,
    StartupError,
    StashKey,
    hookimpl,
)
from fleetbus.bus.actions import ActionRegistrar
from fleetbus.bus.client import HubClient
from fleetbus.bus.hub import Hub
from fleetbus.bus.ipc import MAX_IDLE
from fleetbus.bus.lock import is_locked
from fleetbus.bus.paths import Home
from fleetbus.bus.queries import QueryRegistrar
from fleetbus.bus.subscribers import SubscriberRegistrar
from fleetbus.plugins.runner import RUNNER, Runner, runner_of
from fleetbus.plugins.runner.config import DISPATCH
from fleetbus.testing.hub import embedded_hub, isolated_env

pytestmark = pytest.mark.anyio


class Name(BaseModel):
    name: str


class Text(BaseModel):
    text: str


class Said(Message):
    topic: ClassVar[str] = "lifecycle.said"
    text: str


class Lookup(Query):
    key: str


class Recorder:
    """An inline plugin that records its lifecycle into a shared list."""

    def __init__(self, name: str, log: list[str], *, fail_startup: bool = False) -> None:
        self.name, self.log, self.fail_startup = name, log, fail_startup

    @hookimpl
    def startup(self, hub: Hub) -> None:
        self.log.append(f"start {self.name}")
        if self.fail_startup:
            raise RuntimeError("no database for me")

    @hookimpl
    async def shutdown(self, hub: Hub) -> None:
        await anyio.sleep(0)
        self.log.append(f"stop {self.name}")


async def test_startup_in_registration_order_and_shutdown_in_reverse(home: Path) -> None:
    log: list[str] = []
    plugins = [(n, Recorder(n, log)) for n in ("a", "b", "c")]
    async with embedded_hub(home, plugins=plugins) as hub:
        assert hub.plugins.names == [
            "hub", "runner", "agentic", "sync", "fleet", "mcp_host", "a", "b", "c",
        ]  # fmt: skip
        assert log == ["start a", "start b", "start c"]
    assert log[3:] == ["stop c", "stop b", "stop a"]


async def test_a_failing_startup_aborts_naming_the_plugin_and_stops_the_started(home: Path) -> None:
    log: list[str] = []
    plugins = [
        ("a", Recorder("a", log)),
        ("b", Recorder("b", log, fail_startup=True)),
        ("c", Recorder("c", log)),
    ]
    with pytest.raises(
        StartupError, match="plugin 'b' failed to start: RuntimeError: no database for me"
    ):
        async with embedded_hub(home, plugins=plugins):
            pytest.fail("the hub must not start")
    assert "start c" not in log
    assert log[-2:] == ["stop b", "stop a"]
    assert not is_locked(Home(home).lock)
    assert not Home(home).socket.exists()


class Ordered:
    """Records its startup; `tryfirst`/`trylast` move it to the front or back."""

    def __init__(self, name: str, log: list[str]) -> None:
        self.name, self.log = name, log

    @hookimpl
    def startup(self, hub: Hub) -> None:
        self.log.append(self.name)


class First(Ordered):
    @hookimpl(tryfirst=True)
    def startup(self, hub: Hub) -> None:
        self.log.append(self.name)


class Last(Ordered):
    @hookimpl(trylast=True)
    def startup(self, hub: Hub) -> None:
        self.log.append(self.name)


class Wrapper:
    """A hook wrapper around `startup`: it sees every plugin's call and its result."""

    def __init__(self, log: list[str]) -> None:
        self.log = log

    @hookimpl(wrapper=True)
    def startup(self, hub: Hub) -> Generator[None, Any, Any]:
        self.log.append("wrap")
        result = yield
        self.log.append("unwrap")
        return result


async def test_hooks_honour_tryfirst_trylast_and_wrappers(home: Path) -> None:
    log: list[str] = []
    plugins = [
        ("last", Last("last", log)),
        ("a", Ordered("a", log)),
        ("wrapper", Wrapper(log)),
        ("first", First("first", log)),
        ("b", Ordered("b", log)),
    ]
    async with embedded_hub(home, plugins=plugins):
        pass
    started = [entry for entry in log if entry not in ("wrap", "unwrap")]
    assert started == ["first", "a", "b", "last"]
    # the wrapper wraps each plugin's call, the built-ins' (runner, agentic, sync, fleet,
    # mcp_host)
    assert log[:3] == ["wrap", "first", "unwrap"]
    assert log.count("wrap") == log.count("unwrap") == len(started) + 5


async def test_trace_logs_every_hook_call(home: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="fleetbus.plugins")
    env = {**isolated_env(home), "FLEETBUS_TRACE": "1"}
    async with embedded_hub(home, env=env, plugins=[("a", Recorder("a", []))]):
        pass
    traced = "\n".join(r.getMessage() for r in caplog.records if r.name == "fleetbus.plugins")
    for hook in (
        "register_config",
        "register_migrations",
        "register_actions",
        "register_queries",
        "startup",
        "shutdown",
    ):
        assert f"hook {hook} [" in traced, f"{hook} is not traced:\n{traced}"
    assert "hook startup [a] (hub=<Hub " in traced
    assert "hook register_actions [runner] (register=<ActionRegistrar of plugin 'runner'>" in traced


async def test_no_trace_without_the_switch(home: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="fleetbus.plugins")
    async with embedded_hub(home):
        pass
    assert not [r for r in caplog.records if r.getMessage().startswith("hook ")]


# -- config sections registered through the hook ---------------------------------------------
class Greeter(BaseModel):
    """Settings of the greeter plugin."""

    model_config = ConfigDict(extra="forbid")

    greeting: str = Field("hello", description="The word said before the name.")
    times: int = Field(1, ge=1, description="How often to say it.")


GREETER = ConfigSection("greeter", Greeter, "Settings of the greeter plugin.")


class GreeterPlugin:
    """Claims `sections` (by default its own) and reads its section back at startup."""

    def __init__(self, *sections: ConfigSection[Any]) -> None:
        self.sections = sections or (GREETER,)
        self.seen: Greeter | None = None

    @hookimpl
    def register_config(self, register: ConfigRegistrar) -> None:
        for section in self.sections:
            register(section)

    @hookimpl
    def startup(self, hub: Hub) -> None:
        if GREETER in hub.config:
            self.seen = hub.config[GREETER]


def config_env(home: Path, text: str) -> dict[str, str]:
    path = home.parent / "fleetbus.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return isolated_env(home, config=path)


async def test_a_plugin_reads_its_own_section(home: Path) -> None:
    plugin = GreeterPlugin()
    env = config_env(home, "greeter:\n  greeting: hi\n")
    async with embedded_hub(home, env=env, plugins=[("greeter", plugin)]) as hub:
        assert plugin.seen == Greeter(greeting="hi")
        assert hub.config[GREETER] is plugin.seen
        assert hub.config.owner("greeter") == "greeter"
        assert hub.config[DISPATCH].total_concurrency == 8  # the runner's, through its hook
        assert "register_config" in hub.plugins.infos[-1].hooks


async def test_a_bad_value_in_a_plugin_section_names_file_key_and_plugin(home: Path) -> None:
    env = config_env(home, "greeter:\n  times: 0\n")
    with pytest.raises(ConfigError) as info:
        async with embedded_hub(home, env=env, plugins=[("greeter", GreeterPlugin())]):
            pytest.fail("the hub must not start")
    assert str(info.value) == (
        f"{env['FLEETBUS_CONFIG']}: greeter.times: Input should be greater than or equal to 1 "
        "(plugin 'greeter')"
    )
    assert not is_locked(Home(home).lock)


async def test_a_section_registered_twice_by_one_plugin(home: Path) -> None:
    with pytest.raises(StartupError, match="plugin 'greeter' registers config section 'greeter'"):
        async with embedded_hub(home, plugins=[("greeter", GreeterPlugin(GREETER, GREETER))]):
            pytest.fail("the hub must not start")


async def test_a_section_another_plugin_owns_names_both(home: Path) -> None:
    clash = ConfigSection("dispatch", Greeter, "Takes the runner's section.")
    with pytest.raises(
        StartupError,
        match="config section 'dispatch' is registered twice: by plugin 'runner' and by "
        "plugin 'greeter'",
    ):
        async with embedded_hub(home, plugins=[("greeter", GreeterPlugin(clash))]):
            pytest.fail("the hub must not start")
    plugins = [("one", GreeterPlugin()), ("two", GreeterPlugin())]
    with pytest.raises(StartupError, match="by plugin 'one' and by plugin 'two'"):
        async with embedded_hub(home, plugins=plugins):
            pytest.fail("the hub must not start")
    core = ConfigSection("hub", Greeter, "Takes the core's section.")
    with pytest.raises(StartupError, match="by the core and by plugin 'greeter'"):
        async with embedded_hub(home, plugins=[("greeter", GreeterPlugin(core))]):
            pytest.fail("the hub must not start")


class BrokenConfig:
    @hookimpl
    def register_config(self, register: ConfigRegistrar) -> None:
        register(Greeter)  # type: ignore[arg-type]  # the model, not a section


async def test_register_config_takes_sections_only(home: Path) -> None:
    with pytest.raises(StartupError, match=r"plugin 'broken': register\(\) takes a ConfigSection"):
        async with embedded_hub(home, plugins=[("broken", BrokenConfig())]):
            pytest.fail("the hub must not start")


async def test_a_disabled_plugins_section_is_reported_not_refused(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    text = "greeter:\n  times: 0\ndispatch:\n  total_concurrency: 0\n"
    env = {
        **config_env(home, text),
        "FLEETBUS_DISABLE_PLUGINS": "greeter,runner,agentic,sync,fleet",
    }
    with caplog.at_level(logging.INFO, logger="fleetbus.manifests"):
        async with embedded_hub(home, env=env, plugins=[("greeter", GreeterPlugin())]) as hub:
            assert hub.config.ignored == {
                "greeter": "plugin 'greeter' is disabled by FLEETBUS_DISABLE_PLUGINS",
                "agents": "plugin 'runner' is disabled by FLEETBUS_DISABLE_PLUGINS",
                "dispatch": "plugin 'runner' is disabled by FLEETBUS_DISABLE_PLUGINS",
            }
            assert list(hub.config) == ["hub"]
            with pytest.raises(KeyError, match="plugin 'runner' is disabled"):
                hub.config[DISPATCH]
    warned = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert (
        f"{env['FLEETBUS_CONFIG']}: config section 'greeter' is not checked: plugin 'greeter' "
        "is disabled by FLEETBUS_DISABLE_PLUGINS"
    ) in warned
    assert any("'dispatch'" in w for w in warned)  # set in the user's file
    assert not any("'agents'" in w for w in warned)  # only in the built-in files


# -- per-hub objects -------------------------------------------------------------------------
COUNTER = StashKey[list[str]]()


async def test_each_hub_has_its_own_stash(tmp_path: Path) -> None:
    homes = [tmp_path / "h1", tmp_path / "h2"]
    async with (
        embedded_hub(homes[0], serve_socket=False) as one,
        embedded_hub(homes[1], serve_socket=False) as two,
    ):
        assert isinstance(one.stash[RUNNER], Runner)  # the runner keeps its Runner there
        assert runner_of(one) is one.stash[RUNNER] is not two.stash[RUNNER]
        one.stash[COUNTER] = ["one"]
        assert COUNTER in one.stash and COUNTER not in two.stash
        assert two.stash.get(COUNTER, None) is None
        assert two.stash.setdefault(COUNTER, ["two"]) == ["two"]
        assert one.stash[COUNTER] == ["one"]
        assert one.stash.pop(COUNTER, None) == ["one"] and COUNTER not in one.stash


class Misspelled:
    @hookimpl
    def register_action(self, register: Any) -> None: ...


async def test_a_misspelled_hook_is_rejected_with_a_suggestion(home: Path) -> None:
    with pytest.raises(
        StartupError,
        match="unknown hook 'register_action' \\(did you mean 'register_actions'\\?\\)",
    ):
        async with embedded_hub(home, plugins=[("typo", Misspelled())]):
            pytest.fail("the hub must not start")


class Full:
    """Every kind of declaration a plugin can make."""

    def __init__(self) -> None:
        self.heard: list[str] = []
        self.heard_event = anyio.Event()
        self.migrations = Migrations("fleetbus.full")

        @self.migrations()
        def m0001_initial(db: Database) -> None:
            db.table("notes").create({"id": int, "text": str}, pk="id")

    @hookimpl
    def register_migrations(self, register: Any) -> None:
        register(self.migrations)

    @hookimpl
    def register_actions(self, register: ActionRegistrar, hub: Hub) -> None:
        @register("full.say", exposed=True)
        async def say(req: Text, ctx: Context) -> Text:
            """Store a note and announce it."""

            def write(tx: Any) -> None:
                tx.db.table("notes").insert({"text": req.text})
                tx.publish(Said(text=req.text), ctx)

            await hub.store.write(write)
            return req

        @register("full.slow")
        async def slow(req: Text) -> Text:
            await self.release.wait()
            return req

    @hookimpl
    def register_queries(self, register: QueryRegistrar) -> None:
        @register(Lookup)
        def lookup(q: Lookup) -> dict[str, str]:
            return {"key": q.key, "value": q.key.upper()}

    @hookimpl
    def register_subscribers(self, subscribe: SubscriberRegistrar) -> None:
        @subscribe(Said)
        async def heard(message: Said) -> None:
            self.heard.append(message.text)
            self.heard_event.set()

    release = anyio.Event()


async def test_migrations_actions_queries_and_subscribers_from_hooks(home: Path) -> None:
    full = Full()
    async with embedded_hub(home, plugins=[("full", full)]) as hub:
        assert hub.store.db.table("notes").exists()
        result = await hub.bus.perform("full.say", {"text": "hi"})
        assert result.text == "hi"
        with anyio.fail_after(5):
            await full.heard_event.wait()
        assert full.heard == ["hi"]
        assert await hub.bus.query(Lookup(key="k")) == {"key": "k", "value": "K"}
        assert [r["text"] for r in hub.store.db.table("notes").rows] == ["hi"]


async def test_disabling_a_builtin_by_name(home: Path) -> None:
    env = {**isolated_env(home), "FLEETBUS_DISABLE_PLUGINS": "hub"}
    async with embedded_hub(home, env=env) as hub:
        assert "hub.ping" not in hub.bus.actions
        assert ("hub", "disabled by FLEETBUS_DISABLE_PLUGINS") in hub.plugins.skipped


async def test_a_second_hub_for_the_same_home_is_refused(home: Path) -> None:
    async with embedded_hub(home):
        with pytest.raises(StartupError, match=r"another hub .* is already running"):
            async with embedded_hub(home):
                pytest.fail("two hubs")


async def test_an_idle_hub_stops_by_itself(home: Path) -> None:
    hub = Hub(home, env=isolated_env(home), entry_points=False, idle_timeout=0.1)
    with anyio.fail_after(10):
        await hub.run()  # returns on its own
    assert not is_locked(Home(home).lock)


async def test_a_connected_client_keeps_an_idle_hub_alive(home: Path) -> None:
    hub = Hub(home, env=isolated_env(home), entry_points=False, idle_timeout=0.1)
    async with anyio.create_task_group() as tg:
        await tg.start(hub.run)
        async with HubClient.open(hub.socket_path) as client:
            # several idle periods pass while connected; the hub still answers
            for _ in range(3):
                await client.perform("hub.ping", {})
                with anyio.move_on_after(0.15):
                    await anyio.Event().wait()
            assert (await client.status())["clients"] == 1
        with anyio.fail_after(10):  # once the client is gone, the idle hub stops itself
            await hub._stop.wait()


# -- the IPC socket -------------------------------------------------------------------------
async def test_client_performs_and_errors_keep_their_type(home: Path) -> None:
    async with (
        embedded_hub(home, plugins=[("full", Full())]) as hub,
        HubClient.open(hub.socket_path) as client,
    ):
        assert await client.perform("full.say", {"text": "ok"}) == {"text": "ok"}
        with pytest.raises(InvalidInput) as err:
            await client.perform("full.say", {})
        assert err.value.errors == [{"field": "text", "message": "Field required"}]
        with pytest.raises(ActionNotFound) as missing:
            await client.perform("nope.nothing", {})
        assert missing.value.name == "nope.nothing"
        hello = await client.hello()
        assert hello["protocol"] == 1 and hello["home"] == str(home)


async def test_requests_on_one_connection_run_concurrently(home: Path) -> None:
    full = Full()
    full.release = anyio.Event()
    async with (
        embedded_hub(home, plugins=[("full", full)]) as hub,
        HubClient.open(hub.socket_path) as client,
    ):
        results: list[str] = []

        async def slow() -> None:
            results.append((await client.perform("full.slow", {"text": "slow"}))["text"])

        async with anyio.create_task_group() as tg:
            tg.start_soon(slow)
            with anyio.fail_after(5):
                results.append((await client.perform("hub.ping", {"echo": "fast"}))["echo"])
            full.release.set()
        assert results == ["fast", "slow"]


async def test_a_connection_reuses_its_workers_and_keeps_few_idle(home: Path) -> None:
    """Requests waiting together on one connection each hold a worker, and a ping passes
    them; once they are answered the connection keeps at most MAX_IDLE idle workers."""
    full = Full()
    waiting = MAX_IDLE * 3
    async with (
        embedded_hub(home, plugins=[("full", full)]) as hub,
        HubClient.open(hub.socket_path) as client,
    ):
        await client.perform("hub.ping", {"echo": "warm"})
        await anyio.wait_all_tasks_blocked()
        before = len(asyncio.all_tasks())
        for burst in range(2):
            full.release = anyio.Event()
            texts: list[str] = []

            async def slow(text: str, texts: list[str] = texts) -> None:
                texts.append((await client.perform("full.slow", {"text": text}))["text"])

            with anyio.fail_after(30):
                async with anyio.create_task_group() as tg:
                    for n in range(waiting):
                        tg.start_soon(slow, f"{burst}-{n}")
                    while hub.bus.inflight < waiting:
                        await anyio.wait_all_tasks_blocked()
                    assert (await client.perform("hub.ping", {"echo": "past"}))["echo"] == "past"
                    full.release.set()
            assert sorted(texts) == sorted(f"{burst}-{n}" for n in range(waiting))
            await anyio.wait_all_tasks_blocked()
            assert len(asyncio.all_tasks()) <= before + MAX_IDLE


async def test_subscribe_streams_messages_with_context_and_replays_since(home: Path) -> None:
    async with (
        embedded_hub(home, plugins=[("full", Full())]) as hub,
        HubClient.open(hub.socket_path) as client,
    ):
        ctx = Context(caller="mcp:s1", origin={"session": "s1"})
        await client.perform("full.say", {"text": "before"}, context=ctx)
        async with client.subscribe(["lifecycle.*"], since=0) as messages:
            await client.perform("full.say", {"text": "after"})
            got = []
            with anyio.fail_after(5):
                async for env in messages:
                    got.append(env)
                    if len(got) == 2:
                        break
        assert [e["data"]["text"] for e in got] == ["before", "after"]
        assert got[0]["context"]["origin"] == {"session": "s1"}
        assert got[0]["context"]["caller"] == "mcp:s1"
        assert got[0]["seq"] < got[1]["seq"]


async def test_background_jobs_over_ipc(home: Path) -> None:
    async with (
        embedded_hub(home, plugins=[("full", Full())]) as hub,
        HubClient.open(hub.socket_path) as client,
    ):
        job_id = await client.perform_async("full.say", {"text": "bg"})
        info = await client.job(job_id, wait=5)
        assert info["status"] == "completed" and info["result"] == {"text": "bg"}
        with pytest.raises(InvalidInput, match="no job"):
            await client.job("nope")


async def test_query_over_ipc(home: Path) -> None:
    async with (
        embedded_hub(home, plugins=[("full", Full())]) as hub,
        HubClient.open(hub.socket_path) as client,
    ):
        assert await client.query("Lookup", {"key": "a"}) == {"key": "a", "value": "A"}
        assert await client.query("Lookup", {"key": "a"}, all=True) == [{"key": "a", "value": "A"}]
        with pytest.raises(
            InvalidInput,
            match=r"unknown query 'Nope' \(known: FinishedRuns, FinishedTasks, FreeSlots, Lookup, WorkspaceQuery\)",
        ):
            await client.query("Nope", {})
        with pytest.raises(InvalidInput, match="key"):
            await client.query("Lookup", {})


async def test_garbage_on_the_socket_gets_json_rpc_errors_and_the_connection_lives(
    home: Path,
) -> None:
    async with embedded_hub(home) as hub:
        stream = await anyio.connect_unix(hub.socket_path)
        async with stream:
            from anyio.streams.buffered import BufferedByteReceiveStream

            reader = BufferedByteReceiveStream(stream)

            async def ask(raw: bytes) -> dict[str, Any]:
                await stream.send(raw + b"\n")
                with anyio.fail_after(5):
                    return dict(json.loads(await reader.receive_until(b"\n", 1 << 20)))

            assert (await ask(b"{not json"))["error"]["code"] == -32700
            assert (await ask(b'{"id": 1, "method": "nope"}'))["error"]["code"] == -32601
            assert (await ask(b'{"id": 2, "method": "perform", "params": [1]}'))["error"][
                "code"
            ] == -32602
            bad = await ask(
                b'{"id": 3, "method": "perform", "params": {"action": "hub.ping", "bogus": 1}}'
            )
            assert bad["error"]["code"] == -32602
            ok = await ask(
                b'{"jsonrpc": "2.0", "id": 4, "method": "perform", "params": {"action": "hub.ping", "input": {"echo": "still here"}}}'
            )
            assert ok["result"]["echo"] == "still here"
