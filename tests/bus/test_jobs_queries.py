"""Background jobs (`Bus.start_job`) and typed queries."""

from __future__ import annotations

import anyio
import pytest
from pydantic import BaseModel

from fleetbus.bus import ActionFailed, Bus, ChannelPush, Context, InvalidInput, Query
from fleetbus.bus.actions import ActionRegistrar
from fleetbus.bus.queries import QueryRegistrar

pytestmark = pytest.mark.anyio


class Steps(BaseModel):
    steps: int


class Done(BaseModel):
    steps: int


async def test_start_job_returns_at_once_and_reports_progress_then_completion() -> None:
    async with Bus() as bus:
        gate = anyio.Event()

        @ActionRegistrar("t", bus.add_action)("work.run")
        async def run(req: Steps, ctx: Context) -> Done:
            await gate.wait()
            for step in range(req.steps):
                ctx.report_progress((step + 1) / req.steps, f"step {step + 1}")
            return Done(steps=req.steps)

        sub = bus.open_subscription(["bus.job_*"])
        job_id = bus.start_job("work.run", {"steps": 2})
        job = bus.job(job_id)
        assert job is not None and job.status == "running"
        gate.set()
        with anyio.fail_after(5):
            await job.done.wait()
            topics = [(await sub.receive()) for _ in range(4)]
        assert [e.topic for e in topics] == [
            "bus.job_started",
            "bus.job_progress",
            "bus.job_progress",
            "bus.job_completed",
        ]
        assert all(e.context.job_id == job_id for e in topics)
        assert topics[2].message.progress == 1.0  # type: ignore[attr-defined]
        assert topics[3].message.ok is True  # type: ignore[attr-defined]
        assert job.info()["result"] == {"steps": 2} and job.status == "completed"


async def test_bad_input_is_refused_before_a_job_exists() -> None:
    async with Bus() as bus:

        @ActionRegistrar("t", bus.add_action)("work.run")
        async def run(req: Steps) -> Done:
            return Done(steps=req.steps)

        sub = bus.open_subscription(None)
        with pytest.raises(InvalidInput, match="steps"):
            bus.start_job("work.run", {})
        bus.publish(ChannelPush(channel="test", content="marker"))
        with anyio.fail_after(5):
            first = await sub.receive()
        assert first.topic == "channel"  # no job message came before the marker


async def test_a_failing_job_completes_with_its_error() -> None:
    async with Bus() as bus:

        @ActionRegistrar("t", bus.add_action)("work.fail")
        async def fail(req: Steps) -> Done:
            raise OSError("disk on fire")

        sub = bus.open_subscription(["bus.job_completed"])
        job_id = bus.start_job("work.fail", {"steps": 1})
        with anyio.fail_after(5):
            env = await sub.receive()
        job = bus.job(job_id)
        assert job is not None and job.status == "failed"
        assert job.error is not None and job.error["type"] == ActionFailed.__name__
        assert "OSError: disk on fire" in job.error["message"]
        assert env.message.ok is False  # type: ignore[attr-defined]


class Workspaces(Query):
    status: str | None = None


async def test_query_returns_the_first_answer_and_query_all_collects() -> None:
    async with Bus() as bus:
        calls: list[str] = []

        @QueryRegistrar("a", bus.add_query_handler)(Workspaces)
        async def first(q: Workspaces) -> list[str] | None:
            calls.append("a")
            return None  # does not know

        @QueryRegistrar("b", bus.add_query_handler)(Workspaces)
        def second(q: Workspaces) -> list[str]:
            calls.append("b")
            return [f"b:{q.status}"]

        @QueryRegistrar("c", bus.add_query_handler)(Workspaces)
        async def third(q: Workspaces, ctx: Context) -> list[str]:
            calls.append("c")
            return [f"c:{ctx.caller}"]

        assert await bus.query(Workspaces(status="running")) == ["b:running"]
        assert calls == ["a", "b"]
        ctx = Context(caller="cli")
        assert await bus.query_all(Workspaces(), context=ctx) == [["b:None"], ["c:cli"]]
        assert "Workspaces" in bus.query_types()


async def test_unanswered_query_is_none_and_failing_handler_names_its_plugin() -> None:
    async with Bus() as bus:
        assert await bus.query(Workspaces()) is None

        @QueryRegistrar("broken", bus.add_query_handler)(Workspaces)
        async def broken(q: Workspaces) -> None:
            raise KeyError("x")

        with pytest.raises(ActionFailed, match="plugin 'broken'"):
            await bus.query(Workspaces())
