"""Broadcast messages: order, bounded buffers with counted drops, isolation of failures."""

from __future__ import annotations

from typing import ClassVar

import anyio
import anyio.to_thread
import pytest

from fleetbus.bus import Bus, Context, Message
from fleetbus.bus.messages import Subscription, topic_matcher

pytestmark = pytest.mark.anyio


class Tick(Message):
    topic: ClassVar[str] = "test.tick"
    n: int


class Tock(Message):
    topic: ClassVar[str] = "other.tock"
    n: int


async def drain(sub: Subscription, count: int) -> list[int]:
    got: list[int] = []
    with anyio.fail_after(5):
        async for env in sub:
            assert isinstance(env.message, Tick)
            got.append(env.message.n)
            if len(got) == count:
                break
    return got


async def test_every_subscriber_gets_every_message_in_publish_order() -> None:
    async with Bus() as bus:
        subs = [bus.open_subscription(["test.tick"], name=f"s{i}") for i in range(5)]
        for n in range(100):
            bus.publish(Tick(n=n))
        for sub in subs:
            assert await drain(sub, 100) == list(range(100))
            assert sub.dropped == 0


async def test_topics_filter_by_exact_name_and_prefix() -> None:
    async with Bus() as bus:
        exact = bus.open_subscription(["test.tick"])
        prefix = bus.open_subscription(["other.*"])
        everything = bus.open_subscription(None)
        bus.publish(Tick(n=1))
        bus.publish(Tock(n=2))
        assert (await exact.receive()).message == Tick(n=1)
        assert (await prefix.receive()).message == Tock(n=2)
        assert [(await everything.receive()).topic for _ in range(2)] == ["test.tick", "other.tock"]
        assert exact.delivered == 1 and prefix.delivered == 1


def test_topic_matcher_forms() -> None:
    assert topic_matcher(None)[2] is True
    assert topic_matcher(["*"])[2] is True
    exact, prefixes, everything = topic_matcher(["a.b", "runner.*", "bus.job_*"])
    assert exact == {"a.b"} and prefixes == ("runner.", "bus.job_") and not everything


async def test_a_full_buffer_drops_for_that_subscriber_only_and_counts() -> None:
    async with Bus() as bus:
        slow = bus.open_subscription(["test.tick"], name="slow", buffer=3)
        fast = bus.open_subscription(["test.tick"], name="fast", buffer=100)
        for n in range(10):
            bus.publish(Tick(n=n))  # never waits, even with `slow` full
        assert slow.dropped == 7
        assert fast.dropped == 0
        assert await drain(slow, 3) == [0, 1, 2]
        assert await drain(fast, 10) == list(range(10))
        stats = {s["name"]: s for s in bus.subscriber_stats()}
        assert stats["slow"]["dropped"] == 7


async def test_a_failing_handler_is_isolated_and_counted() -> None:
    async with Bus() as bus:
        good: list[int] = []
        done = anyio.Event()

        def broken(message: Tick) -> None:
            raise RuntimeError("subscriber bug")

        async def healthy(message: Tick) -> None:
            good.append(message.n)
            if len(good) == 5:
                done.set()

        bus.subscribe(broken, ["test.tick"], name="broken")
        bus.subscribe(healthy, ["test.tick"], name="healthy")
        for n in range(5):
            bus.publish(Tick(n=n))
        with anyio.fail_after(5):
            await done.wait()
        assert good == [0, 1, 2, 3, 4]
        stats = {s["name"]: s for s in bus.subscriber_stats()}
        with anyio.fail_after(5):
            while stats["broken"]["failures"] < 5:
                await anyio.sleep(0)
                stats = {s["name"]: s for s in bus.subscriber_stats()}
        assert stats["broken"]["failures"] == 5


async def test_a_blocked_handler_never_blocks_the_publisher_or_others() -> None:
    async with Bus() as bus:
        release = anyio.Event()
        others: list[int] = []
        all_seen = anyio.Event()

        async def stuck(message: Tick) -> None:
            await release.wait()

        async def other(message: Tick) -> None:
            others.append(message.n)
            if len(others) == 50:
                all_seen.set()

        bus.subscribe(stuck, ["test.tick"], name="stuck", buffer=4)
        bus.subscribe(other, ["test.tick"], name="other")
        for n in range(50):
            bus.publish(Tick(n=n))
        with anyio.fail_after(5):
            await all_seen.wait()
        stuck_stats = next(s for s in bus.subscriber_stats() if s["name"] == "stuck")
        assert stuck_stats["dropped"] >= 45  # one in the handler, four buffered
        release.set()


async def test_handlers_may_take_the_context() -> None:
    async with Bus() as bus:
        got: list[Context] = []
        seen = anyio.Event()

        async def handler(message: Tick, context: Context) -> None:
            got.append(context)
            seen.set()

        bus.subscribe(handler, [Tick.topic])
        ctx = Context(caller="cli")
        bus.publish(Tick(n=1), ctx)
        with anyio.fail_after(5):
            await seen.wait()
        assert got == [ctx]


async def test_unsubscribe_stops_delivery() -> None:
    async with Bus() as bus:
        got: list[int] = []
        first = anyio.Event()

        def handler(message: Tick) -> None:
            got.append(message.n)
            first.set()

        unsubscribe = bus.subscribe(handler, ["test.tick"])
        bus.publish(Tick(n=1))
        with anyio.fail_after(5):
            await first.wait()
        unsubscribe()
        bus.publish(Tick(n=2))
        assert bus.subscriber_stats() == []
        assert got == [1]


async def test_publish_from_a_worker_thread_hops_to_the_loop() -> None:
    async with Bus() as bus:
        sub = bus.open_subscription(["test.tick"])
        await anyio.to_thread.run_sync(lambda: bus.publish(Tick(n=7)))
        assert (await sub.receive()).message == Tick(n=7)


async def test_history_keeps_recent_messages_by_sequence() -> None:
    async with Bus() as bus:
        first = bus.publish(Tick(n=1))
        bus.publish(Tick(n=2))
        assert first is not None
        assert [e.message.n for e in bus.history(first.seq)] == [2]  # type: ignore[attr-defined]
        assert [e.to_dict()["data"] for e in bus.history()] == [{"n": 1}, {"n": 2}]


def test_buffers_must_be_bounded() -> None:
    with pytest.raises(ValueError, match="finite"):
        Subscription("x", None, buffer=0)


async def test_a_sync_handler_runs_in_a_worker_thread() -> None:
    import threading

    loop_thread = threading.get_ident()
    seen: list[int] = []
    done = anyio.Event()
    async with Bus() as bus:

        def handler(message: Tick) -> None:
            seen.append(threading.get_ident())
            anyio.from_thread.run_sync(done.set)

        bus.subscribe(handler, ["test.tick"])
        bus.publish(Tick(n=1))
        with anyio.fail_after(5):
            await done.wait()
    assert seen and seen[0] != loop_thread
