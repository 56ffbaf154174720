"""`fleetbus demo`: the bus at work on an embedded hub, with a small inline plugin.

It shows plugins loading, actions with validated input, a database write whose message is
published after the commit, a background job reporting progress, a fake coding agent run
as a real process, and the clear errors a caller gets for bad input.
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
from sqlite_utils import Migrations

from fleetbus.bus import BusError, Context, Message, hookimpl
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


class Work(BaseModel):
    steps: int = Field(ge=1, le=50, description="How many steps to work through.")


class Worked(BaseModel):
    steps: int


class AgentRun(BaseModel):
    prompt: str


class AgentResult(BaseModel):
    exit_code: int
    output: str


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

        @register("demo.work", exposed=True, mutating=False)
        async def work(req: Work, ctx: Context) -> Worked:
            """Work through some steps, reporting progress."""
            for step in range(1, req.steps + 1):
                await anyio.sleep(0.05)
                ctx.report_progress(step / req.steps, f"step {step} of {req.steps}")
            return Worked(steps=req.steps)

        @register("demo.agent", exposed=True)
        async def agent(req: AgentRun) -> AgentResult:
            """Run the bundled fake coding agent as a real process."""
            cmd = [sys.executable, "-m", "fleetbus.testing.fake_agent", req.prompt]
            result = await anyio.run_process(cmd, check=False)
            return AgentResult(exit_code=result.returncode, output=result.stdout.decode().strip())


async def run_demo(home: Path, env: Mapping[str, str]) -> None:
    console = Console(highlight=False)
    hub = Hub(home, inline=[("demo", DemoPlugin())], env=env, idle_timeout=0)
    with unwrap_group():
        async with anyio.create_task_group() as tg:
            await tg.start(hub.run)
            try:
                await _tour(console, hub, LocalClient(hub))
            finally:
                hub.request_stop()


async def _tour(console: Console, hub: Hub, client: LocalClient) -> None:
    console.print(f"[bold]fleetbus demo[/] - an embedded hub in {hub.home.root}")
    console.print(f"  database: {hub.home.db}")
    console.print(f"  plugins:  {', '.join(hub.plugins.names)}")
    actions = await client.actions()
    console.print(f"  actions:  {', '.join(a['name'] for a in actions)}")

    seen: list[str] = []
    job_seen = anyio.Event()

    def show(message: Message) -> None:
        line = f"  [dim]message[/] {message.topic}: {message.model_dump(mode='json')}"
        seen.append(line)
        console.print(line)
        if message.topic == "bus.job_completed":
            job_seen.set()

    unsubscribe = hub.bus.subscribe(show, ["demo.*", "bus.job_*"], name="demo-printer")

    console.print(
        "\n[bold]1. an action that writes to SQLite[/] (its message is published after the commit)"
    )
    result = await client.perform("demo.visit", {"who": "ada"})
    console.print(f"  demo.visit -> {result}   (the total survives restarts: run the demo again)")

    console.print("\n[bold]2. a background job with progress[/]")
    job_id = await client.perform_async("demo.work", {"steps": 3})
    info = await client.job(job_id, wait=10)
    console.print(f"  job {job_id}: {info['status']}, result {info['result']}")

    console.print("\n[bold]3. a fake coding agent run as a real process[/]")
    run = await client.perform(
        "demo.agent", {"prompt": "echo hello from the fake agent; usage 1200 300 0.02"}
    )
    for line in run["output"].splitlines():
        console.print(f"  agent> {line}")
    console.print(f"  exit code {run['exit_code']}")

    console.print("\n[bold]4. bad input gets one clear line[/]")
    for name, payload in (("demo.visit", {}), ("demo.work", {"steps": 0}), ("demo.nothing", {})):
        try:
            await client.perform(name, payload)
        except BusError as e:
            console.print(f"  {type(e).__name__}: {e}")

    # the printer runs in its own task: let it show the job's last message
    with anyio.move_on_after(2):
        await job_seen.wait()
    unsubscribe()
    console.print(
        f"\n[green]demo finished[/]: {len(seen)} messages seen, state kept in {hub.home.db}"
    )
