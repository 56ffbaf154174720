"""The runner's one clock: the test clock drives the run deadline, the kill grace and the
drain timer with no real waiting.

The clock tests run real agent processes on an embedded hub whose `wall_clock` is a
`ManualClock`; a test moves the clock past a timer only once the timer is set
(`wait_for_sleeper`), and bounds every wait with `fail_after`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import anyio
import anyio.to_thread
import pytest

from fleetbus.plugins.runner.clock import (
    Clock,
    ManualClock,
    SystemClock,
    clock_for,
    wait_until,
)
from fleetbus.testing.processes import group_members, wait_for
from fleetbus.testing.runner import NOON, WAIT, Watch, dispatch, fake_agent, run_info, runner_hub

pytestmark = pytest.mark.anyio

# ignores SIGTERM, and says so in its workspace once it does
STUBBORN = ["sh", "-c", "trap '' TERM; : > .trapped; sleep 30", "{prompt}"]


async def until(predicate: Callable[[], bool]) -> None:
    """Wait (at most WAIT seconds) for a fact no event reports."""
    assert await anyio.to_thread.run_sync(wait_for, predicate, WAIT), "timed out"


# --- the clocks -----------------------------------------------------------------------------


async def test_a_manual_clock_wakes_its_sleepers_when_it_reaches_their_deadline() -> None:
    clock = ManualClock(100.0)
    woke: list[float] = []

    async def sleeper(deadline: float) -> None:
        await clock.sleep_until(deadline)
        woke.append(clock.now())

    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:
            tg.start_soon(sleeper, 110.0)
            tg.start_soon(sleeper, 130.0)
            await clock.wait_for_sleeper(110.0)
            await clock.wait_for_sleeper(130.0)
            assert clock.deadlines == [110.0, 130.0]
            clock.advance(9)
            await anyio.wait_all_tasks_blocked()
            assert woke == []
            clock.advance(1)
            await anyio.wait_all_tasks_blocked()
            assert woke == [110.0]
            clock.set(200.0)
    assert woke == [110.0, 200.0]
    assert clock.deadlines == []


async def test_a_deadline_already_past_returns_at_once() -> None:
    clock = ManualClock(100.0)
    with anyio.fail_after(WAIT):
        await clock.sleep_until(99.0)
        await clock.sleep_until(100.0)


async def test_wait_until_says_whether_the_event_came_before_the_deadline() -> None:
    clock = ManualClock(0.0)
    event = anyio.Event()
    with anyio.fail_after(WAIT):
        async with anyio.create_task_group() as tg:

            async def expire() -> None:
                await clock.wait_for_sleeper(5.0)
                clock.advance(5)

            tg.start_soon(expire)
            assert await wait_until(clock, event, 5.0) is False
        event.set()
        assert await wait_until(clock, event, 5.0) is True
    assert clock.deadlines == []


def test_the_hub_wall_clock_becomes_the_runner_clock() -> None:
    manual = ManualClock(NOON)
    assert clock_for(manual) is manual  # a Clock is used as is
    frozen = clock_for(lambda: NOON)  # a plain callable: real sleeps of the remainder
    assert isinstance(frozen, SystemClock) and isinstance(frozen, Clock)
    assert frozen.now() == NOON
    assert abs(clock_for(time.time).now() - time.time()) < 5


# --- the runner's timers --------------------------------------------------------------------


async def test_the_run_deadline_and_the_kill_grace_follow_the_test_clock(home: Path) -> None:
    """A run that ignores SIGTERM: at its deadline it gets SIGTERM, and SIGKILL only when
    the kill grace (600 s) has passed on the clock, which takes no real time."""
    clock = ManualClock(NOON)
    agents = {"stubborn": {"command": STUBBORN, "prompt": "arg"}}
    begin = time.monotonic()
    async with runner_hub(home, agents=agents, dispatch={"kill_grace": 600}, clock=clock) as hub:
        watch = Watch(hub)
        run = await dispatch(hub, "hold", "t/w/1", agent="stubborn", timeout_minutes=1)
        pid = (await watch.started(run.run_id)).pid
        await until((home / "workspaces/t/w/1/.trapped").exists)
        with anyio.fail_after(WAIT):
            await clock.wait_for_sleeper(NOON + 60)  # the run's deadline
        clock.advance(60)
        with anyio.fail_after(WAIT):
            await clock.wait_for_sleeper(NOON + 60 + 600)  # SIGTERM sent; the grace runs
        assert (await run_info(hub, run.run_id)).status == "running"
        assert group_members(pid)  # it ignored SIGTERM
        clock.advance(599)
        await anyio.wait_all_tasks_blocked()
        assert (await run_info(hub, run.run_id)).status == "running"
        clock.advance(1)
        done = await watch.completed(run.run_id)
        assert (done.status, done.exit_code) == ("timeout", 128 + 9)
        assert done.reason == "timed out after 1m00s"
        assert done.duration_s == 660
        assert not group_members(pid)
    assert time.monotonic() - begin < 60  # far less than the 11 minutes on the clock


async def test_the_drain_timer_starts_a_rate_delayed_run_when_the_clock_gets_there(
    home: Path,
) -> None:
    """No poke: the drain loop sleeps until the rate delay ends, on the clock."""
    clock = ManualClock(NOON)
    agents = {"paced": fake_agent(rates={"min_delay": 60})}
    async with runner_hub(
        home, agents=agents, dispatch={"drain_interval": 3600}, clock=clock
    ) as hub:
        watch = Watch(hub)
        first = await dispatch(hub, "exit 0", "r/w/1", agent="paced")
        second = await dispatch(hub, "exit 0", "r/w/2", agent="paced")
        assert (first.status, second.status) == ("running", "queued")
        assert (await watch.completed(first.run_id)).status == "completed"
        with anyio.fail_after(WAIT):
            await clock.wait_for_sleeper(NOON + 60)  # the loop waits for the delay to end
        clock.advance(59)
        await anyio.wait_all_tasks_blocked()
        assert (await run_info(hub, second.run_id)).status == "queued"
        clock.advance(1)
        await watch.started(second.run_id)
        assert (await watch.completed(second.run_id)).status == "completed"
