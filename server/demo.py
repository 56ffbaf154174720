"""`fleetbus demo`: the bus at work on an embedded hub, with a small inline plugin.

It dispatches the bundled fake coding agent to four workspaces (real processes, each in
its own process group), prints the channel events as runs start and finish, shows
`runner.status`, freezes and unfreezes dispatch, runs a plugin action that writes to
SQLite, and shows the one-line errors a caller gets for bad input.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import anyio
from pydantic import BaseModel, Field
from rich.console import Console
from rich.markup import escape
from sqlite_utils import Migrations

from fleetbus.bus import BusError, ChannelPush, Context, Message, hookimpl
from fleetbus.bus.actions import ActionRegistrar
from fleetbus.bus.client import LocalClient
from fleetbus.bus.errors import unwrap_group
from fleetbus.bus.hub import Hub
from fleetbus.bus.store import MigrationsRegistrar, Tx

migrations = Migrations("fleetbus.demo")


@migrations()
def m0001_initial(db: Any) -> None:
    db["demo_visits"].create({"id": int, "visited_at": float, "who": str}, pk="id")


class Visit(BaseModel):
    who: str = Field(min_length=1, description="Who is visiting.")


class Visits(BaseModel):
    who: str
    total: int


class Visited(Message):
    topic: ClassVar[str] = "demo.visited"
    who: str
    total: int


class DemoPlugin:
    """The inline plugin the demo registers next to the built-ins."""

    @hookimpl
    def register_migrations(self, register: MigrationsRegistrar) -> None:
        register(migrations)

    @hookimpl
    def register_actions(self, register: ActionRegistrar) -> None:
        hub: Hub = register.hub

        @register("demo.visit", exposed=True)
        async def visit(req: Visit, ctx: Context) -> Visits:
            """Record a visit in SQLite and announce it once committed."""

            def write(tx: Tx) -> int:
                tx.db.table("demo_visits").insert({"visited_at": time.time(), "who": req.who})
                total = int(tx.execute("select count(*) from demo_visits").fetchone()[0])
                tx.publish(Visited(who=req.who, total=total), ctx)
                return total

            return Visits(who=req.who, total=await hub.store.write(write))


async def run_demo(home: Path, env: Mapping[str, str]) -> None:
    # piped, rich would wrap every line at 80 columns: let lines be as long as they are
    console = Console(highlight=False, soft_wrap=not sys.stdout.isatty())
    hub = Hub(home, inline=[("demo", DemoPlugin())], env=env, idle_timeout=0)
    with unwrap_group():
        async with anyio.create_task_group() as tg:
            await tg.start(hub.run)
            try:
                await _tour(console, hub, LocalClient(hub))
            finally:
                hub.request_stop()


AGENT_PROMPTS = [
    (
        "core/app/fix-login",
        "high",
        "echo reading the code; sleep 0.4; write NOTES.md the bug is in the session check; usage 1200 300 0.02",
    ),
    (
        "core/app/flaky-test",
        "medium",
        "echo running the tests; sleep 0.7; stderr 3 tests failed; exit 1",
    ),
    (
        "core/api/migrate",
        "medium",
        "sleep 0.3; question Which database should the migration target?",
    ),
    ("core/web/refactor", "low", "echo refactoring; sleep 0.5; usage 5000 1200 0.11"),
]


async def _tour(console: Console, hub: Hub, client: LocalClient) -> None:
    console.print(f"[bold]fleetbus demo[/] - an embedded hub in {hub.home.root}")
    console.print(f"  database: {hub.home.db}")
    console.print(f"  plugins:  {', '.join(hub.plugins.names)}")
    actions = await client.actions()
    console.print(f"  actions:  {', '.join(a['name'] for a in actions)}")

    finished = anyio.Event()
    ended: list[str] = []

    def show(message: Message) -> None:
        if isinstance(message, ChannelPush):
            console.print(
                f"  [cyan]channel[/] {escape(f'[{message.channel}]')} {escape(message.content)}"
            )
            if message.meta.get("status") not in (None, "running"):
                ended.append(message.meta.get("run_id", ""))
                if len(ended) == len(AGENT_PROMPTS):
                    finished.set()

    unsubscribe = hub.bus.subscribe(show, ["channel"], name="demo-printer")

    console.print("\n[bold]1. four fake coding agents, each in its own workspace[/]")
    for workspace, priority, prompt in AGENT_PROMPTS:
        result = await client.perform(
            "runner.dispatch",
            {"agent": "fake", "prompt": prompt, "workspace": workspace, "priority": priority},
        )
        console.print(f"  runner.dispatch {workspace} -> {result['status']} {result['run_id']}")
    with anyio.move_on_after(30):
        await finished.wait()

    console.print("\n[bold]2. runner.status[/]")
    status = await client.perform("runner.status", {"limit": len(AGENT_PROMPTS)})
    counts = ", ".join(
        f"{k} {status[k]}" for k in ("running", "queued", "completed", "failed", "blocked")
    )
    console.print(f"  {counts}; total runs in this home: {status['total']}")
    for run in status["runs"]:
        usage = (
            f"  tokens {run['usage'].get('input_tokens')}/{run['usage'].get('output_tokens')}"
            if run["usage"]
            else ""
        )
        console.print(
            f"  {run['run_id']}  {run['workspace']:<20} {run['status']:<10} {run['reason']}{usage}"
        )

    console.print("\n[bold]3. freeze, dispatch, unfreeze[/]")
    await client.perform("runner.stop", {})
    queued = await client.perform(
        "runner.dispatch",
        {"agent": "fake", "prompt": "echo after the freeze", "workspace": "core/app/later"},
    )
    console.print(f"  while frozen: {queued['status']} ({queued['reason']})")
    ended.clear()
    finished = anyio.Event()
    AGENT_PROMPTS[:] = AGENT_PROMPTS[:1]
    await client.perform("runner.start", {})
    with anyio.move_on_after(30):
        await finished.wait()

    console.print(
        "\n[bold]4. a plugin action writing to SQLite[/] (its message is published after the commit)"
    )
    result = await client.perform("demo.visit", {"who": "ada"})
    console.print(f"  demo.visit -> {result}   (the total survives restarts: run the demo again)")

    console.print("\n[bold]5. bad input gets one clear line[/]")
    for name, payload in (
        ("runner.dispatch", {"agent": "nobody", "prompt": "x", "workspace": "a/b"}),
        ("runner.dispatch", {"agent": "fake", "prompt": "x", "workspace": "../etc"}),
        ("demo.visit", {}),
        ("demo.nothing", {}),
    ):
        try:
            await client.perform(name, payload)
        except BusError as e:
            console.print(f"  {type(e).__name__}: {e}")
    unsubscribe()
    console.print(f"\n[green]demo finished[/]: runs, logs and state are kept in {hub.home.root}")
    console.print(f"  see them again: fleetbus --home {escape(str(hub.home.root))} status")
