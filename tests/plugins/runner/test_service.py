"""The runner service end to end: real agent processes, real SQLite, an injected wall clock.

Every test builds an embedded hub from its own manifest (`runner_hub`), talks to it through
`hub.bus.perform`, and waits on bus messages, never on fixed sleeps. `runner_hub` kills every
run it started before the hub stops, so no agent outlives its test.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio
import pytest

from fleetbus.bus import InvalidInput, Refused
from fleetbus.bus.hub import Hub
from fleetbus.plugins.runner import WorkspaceQuery, runner_of
from fleetbus.testing.processes import group_members
from fleetbus.testing.runner import (
    NOON,
    ORIGIN,
    STUBBORN,
    Clock,
    Watch,
    dispatch,
    fake_agent,
    on,
    run_info,
    runner_hub,
    status,
)

pytestmark = pytest.mark.anyio


def tree(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")} if root.exists() else set()


# --- statuses ------------------------------------------------------------------------------


async def test_exit_0_completes_and_a_nonzero_exit_fails_with_its_code(home: Path) -> None:
    async with runner_hub(home) as hub:
        watch = Watch(hub)
        ok = await dispatch(hub, "echo hello; exit 0", "a/b/ok")
        bad = await dispatch(hub, "exit 3", "a/b/bad")
        assert ok.status == "running" and ok.reason == ""
        assert bad.status == "running"
        done = {r.run_id: await watch.completed(r.run_id) for r in (ok, bad)}
        assert done[ok.run_id].status == "completed"
        assert done[ok.run_id].exit_code == 0
        assert done[bad.run_id].status == "failed"
        assert done[bad.run_id].exit_code == 3
        assert done[bad.run_id].reason == "exit 3"
        info = await run_info(hub, bad.run_id)
        assert (info.status, info.exit_code, info.reason) == ("failed", 3, "exit 3")
        log = Path((await run_info(hub, ok.run_id)).log or "")
        assert "hello" in log.read_text()


async def test_a_question_blocks_the_run_with_the_question_as_reason(home: Path) -> None:
    async with runner_hub(home) as hub:
        watch = Watch(hub)
        run = await dispatch(hub, "question Which DB? Postgres or SQLite", "a/b/q")
        done = await watch.completed(run.run_id)
        assert done.status == "blocked"
        assert done.exit_code == 0
        assert done.reason.startswith("question: Which DB?")
        assert (await run_info(hub, run.run_id)).status == "blocked"
        assert (await status(hub)).blocked == 1


async def test_usage_is_read_from_the_output(home: Path) -> None:
    async with runner_hub(home) as hub:
        watch = Watch(hub)
        run = await dispatch(hub, "usage 1200 300 0.05", "a/b/u")
        done = await watch.completed(run.run_id)
        expected = {"input_tokens": 1200, "output_tokens": 300, "cost_usd": 0.05}
        assert done.status == "completed"
        assert done.usage == expected
        assert (await run_info(hub, run.run_id)).usage == expected


# --- capacity: lanes are never exceeded ----------------------------------------------------


class ProcessSampler:
    """In a thread, counts the live process groups whose command line holds `marker`,
    keyed by `key(argv)` and in all (`*`), every few milliseconds; keeps each maximum."""

    def __init__(self, marker: str, key: Callable[[list[str]], str] = lambda argv: "all") -> None:
        self.marker, self.key = marker, key
        self.max: dict[str, int] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> ProcessSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)

    def _run(self) -> None:
        while not self._stop.is_set():
            groups: dict[str, set[int]] = {}
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        argv = [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
                    if not any(self.marker in a for a in argv):
                        continue
                    with open(f"/proc/{pid}/stat") as f:
                        if f.read().rsplit(")", 1)[1].split()[0] == "Z":
                            continue
                    groups.setdefault(self.key(argv), set()).add(os.getpgid(int(pid)))
                except (OSError, IndexError):
                    continue
            self.samples += 1
            groups["*"] = set().union(*groups.values())
            for key, pgids in groups.items():
                self.max[key] = max(self.max.get(key, 0), len(pgids))
            self._stop.wait(0.002)


async def observe(
    hub: Hub, requests: list[dict[str, Any]], marker: str, key: Callable[[list[str]], str]
) -> tuple[list[Any], list[Any], dict[str, int], dict[str, int]]:
    """Dispatch `requests`, then open every workspace's gate (`go`: the prompts wait for
    it, so which runs start at once does not depend on how fast dispatch is), wait for
    every run to end: (dispatch results, completions, maxima seen in the OS, maxima of
    runner.status lanes)."""
    watch = Watch(hub, ["runner.run_completed"])
    lane_max: dict[str, int] = {}

    def record(lanes: dict[str, Any]) -> None:
        for name, lane in lanes.items():
            assert lane.limit is None or lane.running <= lane.limit, (name, lane)
            lane_max[name] = max(lane_max.get(name, 0), lane.running)

    with ProcessSampler(marker, key) as sampler:
        async with anyio.create_task_group() as tg:

            async def sample_lanes() -> None:
                while True:
                    record((await status(hub, limit=0)).lanes)

            tg.start_soon(sample_lanes)
            runs = [await dispatch(hub, **r) for r in requests]
            root = runner_of(hub).root
            for r in requests:
                (root / r["workspace"]).mkdir(parents=True, exist_ok=True)
                (root / r["workspace"] / "go").touch()
            ends = [await watch.completed(r.run_id, timeout=40) for r in runs]
            tg.cancel_scope.cancel()
    assert sampler.samples > 10
    return runs, ends, sampler.max, lane_max


async def test_the_global_total_is_never_exceeded(home: Path) -> None:
    marker = f"cap-{os.getpid()}-{time.monotonic_ns()}"
    agents = {"fa": fake_agent(concurrency=4), "fb": fake_agent(concurrency=4)}
    async with runner_hub(home, agents=agents, dispatch={"total_concurrency": 3}) as hub:
        requests = [
            {
                "agent": ("fa", "fb")[n % 2],
                "prompt": f"wait go; sleep 0.1; echo {marker}",
                "workspace": f"t/w/{n}",
            }
            for n in range(8)
        ]
        runs, ends, seen, lanes = await observe(hub, requests, marker, lambda argv: "all")
        assert [r.status for r in runs[:3]] == ["running"] * 3
        assert (runs[3].status, runs[3].reason) == ("queued", "lane full: total 3/3")
        assert [e.status for e in ends] == ["completed"] * 8
        assert seen["*"] <= 3
        assert lanes["total"] == 3  # the cap was reached, and held
        assert (await status(hub)).lanes["total"].limit == 3


async def test_the_per_agent_cap_is_never_exceeded(home: Path) -> None:
    marker = f"cap-{os.getpid()}-{time.monotonic_ns()}"
    async with runner_hub(home, agents={"fake": {"concurrency": 2}}) as hub:
        requests = [
            {"prompt": f"wait go; sleep 0.1; echo {marker}", "workspace": f"t/w/{n}"}
            for n in range(6)
        ]
        runs, ends, seen, lanes = await observe(hub, requests, marker, lambda argv: "all")
        assert (runs[2].status, runs[2].reason) == ("queued", "lane full: fake 2/2")
        assert [e.status for e in ends] == ["completed"] * 6
        assert seen["*"] <= 2
        assert lanes["fake"] == 2


async def test_the_per_model_cap_is_never_exceeded(home: Path) -> None:
    marker = f"cap-{os.getpid()}-{time.monotonic_ns()}"
    agents = {
        "fm": fake_agent(
            models=["m1", "m2"], model_args=["{model}"], concurrency={"total": 3, "m1": 1}
        )
    }
    async with runner_hub(home, agents=agents) as hub:
        # the trailing `;` keeps the appended model argument out of the last directive
        requests = [
            {
                "agent": "fm",
                "model": ("m1", "m2")[n % 2],
                "prompt": f"wait go; sleep 0.1; echo {marker};",
                "workspace": f"t/w/{n}",
            }
            for n in range(8)
        ]
        runs, ends, seen, lanes = await observe(hub, requests, marker, lambda argv: argv[-1])
        assert [r.status for r in runs[:2]] == ["running"] * 2
        assert (runs[2].status, runs[2].reason) == ("queued", "lane full: fm:m1 1/1")
        assert runs[3].status == "running"
        assert (runs[4].status, runs[4].reason) == ("queued", "lane full: fm 3/3")
        assert [e.status for e in ends] == ["completed"] * 8
        assert [e.model for e in ends] == ["m1", "m2"] * 4
        assert seen["m1"] <= 1
        assert seen["*"] <= 3
        assert lanes["fm:m1"] == 1
        assert lanes["fm"] == 3


# --- the queue: priority, freeze -----------------------------------------------------------


async def test_priority_order_then_age(home: Path) -> None:
    async with runner_hub(home, agents={"solo": fake_agent(concurrency=1)}) as hub:
        watch = Watch(hub, ["runner.run_started", "runner.run_completed"])
        assert (await hub.bus.perform("runner.stop")).frozen is True
        ids = {}
        for n, priority in enumerate(["low", "medium", "critical", "high", "high"]):
            r = await dispatch(hub, "exit 0", f"p/w/{n}", agent="solo", priority=priority)
            assert (r.status, r.reason) == ("queued", "frozen")
            ids[n] = r.run_id
        await hub.bus.perform("runner.start")
        for run_id in ids.values():
            await watch.completed(run_id)
        order = [m.run_id for m in watch.messages("runner.run_started")]
        assert order == [ids[2], ids[3], ids[4], ids[1], ids[0]]


async def test_a_frozen_runner_queues_and_start_releases(home: Path) -> None:
    async with runner_hub(home) as hub:
        watch = Watch(hub)
        state = await hub.bus.perform("runner.stop")
        assert (state.frozen, state.running, state.queued) == (True, 0, 0)
        run = await dispatch(hub, "exit 0")
        assert (run.status, run.reason, run.queue_position) == ("queued", "frozen", 1)
        queued = await watch.wait(on("runner.run_queued", run.run_id))
        assert queued.message.reason == "frozen"
        await hub.bus.perform("runner.poke")  # a poke does not unfreeze
        info = await run_info(hub, run.run_id)
        assert (info.status, info.reason) == ("queued", "frozen")
        assert (await status(hub)).frozen is True
        state = await hub.bus.perform("runner.start")
        assert state.frozen is False
        assert (await watch.completed(run.run_id)).status == "completed"


@pytest.mark.parametrize(
    ("dispatch_spec", "env"),
    [({"start_frozen": True}, {}), ({}, {"FLEETBUS_FROZEN": "1"})],
    ids=["start_frozen", "FLEETBUS_FROZEN"],
)
async def test_the_hub_can_start_frozen(
    home: Path, dispatch_spec: dict[str, Any], env: dict[str, str]
) -> None:
    async with runner_hub(home, dispatch=dispatch_spec, env=env) as hub:
        watch = Watch(hub)
        assert (await status(hub)).frozen is True
        run = await dispatch(hub, "exit 0")
        assert (run.status, run.reason) == ("queued", "frozen")
        await hub.bus.perform("runner.start")
        assert (await watch.completed(run.run_id)).status == "completed"
        assert (await status(hub)).frozen is False


# --- kill and timeout ----------------------------------------------------------------------


async def test_kill_one_run_ends_its_whole_process_group(home: Path) -> None:
    async with runner_hub(home) as hub:
        watch = Watch(hub)
        run = await dispatch(hub, "sleep 60")
        other = await dispatch(hub, "sleep 60", "a/b/other")
        pid = (await watch.started(run.run_id)).pid
        assert (await run_info(hub, run.run_id)).pid == pid
        assert os.getpgid(pid) == pid  # the run leads its own group
        result = await hub.bus.perform("runner.kill", {"run_id": run.run_id})
        assert (result.killed, result.cancelled, result.frozen) == (1, 0, False)
        done = await watch.completed(run.run_id)
        assert done.status == "cancelled"
        assert done.reason == "killed by runner.kill"
        with pytest.raises(ProcessLookupError):
            os.killpg(pid, 0)
        assert (await run_info(hub, run.run_id)).status == "cancelled"
        assert (await run_info(hub, other.run_id)).status == "running"
        with pytest.raises(Refused, match="cancelled"):
            await hub.bus.perform("runner.kill", {"run_id": run.run_id})
        with pytest.raises(InvalidInput) as err:
            await hub.bus.perform("runner.kill", {"run_id": "r-no-such-run"})
        assert err.value.errors[0]["field"] == "run_id"


async def test_kill_of_an_ended_run_is_refused(home: Path) -> None:
    async with runner_hub(home) as hub:
        watch = Watch(hub)
        run = await dispatch(hub, "exit 0")
        await watch.completed(run.run_id)
        with pytest.raises(Refused, match="completed"):
            await hub.bus.perform("runner.kill", {"run_id": run.run_id})


async def test_kill_everything_cancels_the_queue_and_freezes(home: Path) -> None:
    async with runner_hub(home) as hub:
        watch = Watch(hub)
        a = await dispatch(hub, "sleep 60", "k/w/a")
        b = await dispatch(hub, "sleep 60", "k/w/b")
        waiting = await dispatch(hub, "exit 0", "k/w/a")
        assert (a.status, b.status, waiting.status) == ("running", "running", "queued")
        pids = [(await watch.started(r.run_id)).pid for r in (a, b)]
        result = await hub.bus.perform("runner.kill", {})
        assert (result.killed, result.cancelled, result.frozen) == (2, 1, True)
        for r in (a, b, waiting):
            assert (await watch.completed(r.run_id)).status == "cancelled"
        for pid in pids:
            assert not group_members(pid)
        after = await status(hub)
        assert (after.running, after.queued, after.cancelled, after.frozen) == (0, 0, 3, True)
        late = await dispatch(hub, "exit 0", "k/w/c")
        assert (late.status, late.reason) == ("queued", "frozen")


async def test_kill_by_agent_and_by_workspace(home: Path) -> None:
    async with runner_hub(home, agents={"other": fake_agent()}) as hub:
        watch = Watch(hub)
        mine = await dispatch(hub, "sleep 60", "k/w/1")
        theirs = await dispatch(hub, "sleep 60", "k/w/2", agent="other")
        third = await dispatch(hub, "sleep 60", "k/w/3", agent="other")
        for r in (mine, theirs, third):
            await watch.started(r.run_id)
        result = await hub.bus.perform("runner.kill", {"agent": "fake"})
        assert (result.killed, result.cancelled, result.frozen) == (1, 0, False)
        assert (await watch.completed(mine.run_id)).status == "cancelled"
        assert (await run_info(hub, theirs.run_id)).status == "running"
        result = await hub.bus.perform("runner.kill", {"workspace": "k/w/2"})
        assert (result.killed, result.cancelled) == (1, 0)
        assert (await watch.completed(theirs.run_id)).status == "cancelled"
        assert (await run_info(hub, third.run_id)).status == "running"
        with pytest.raises(InvalidInput) as err:
            await hub.bus.perform("runner.kill", {"agent": "nobody"})
        assert err.value.errors[0]["field"] == "agent"
        with pytest.raises(InvalidInput) as err:
            await hub.bus.perform("runner.kill", {"workspace": "../x"})
        assert err.value.errors[0]["field"] == "workspace"
        assert (await status(hub)).frozen is False


async def test_a_run_past_its_timeout_is_ended(home: Path) -> None:
    async with runner_hub(home) as hub:
        watch = Watch(hub)
        run = await dispatch(hub, "sleep 60", timeout_minutes=0.01)
        pid = (await watch.started(run.run_id)).pid
        done = await watch.completed(run.run_id)
        assert done.status == "timeout"
        assert done.reason.startswith("timed out after")
        assert not group_members(pid)
        assert (await status(hub)).timeout == 1


async def test_a_run_that_ignores_sigterm_is_killed_after_the_grace_period(home: Path) -> None:
    agents = {"stubborn": {"command": STUBBORN, "prompt": "arg"}}
    async with runner_hub(home, agents=agents, dispatch={"kill_grace": 0.5}) as hub:
        watch = Watch(hub)
        begin = time.monotonic()
        run = await dispatch(hub, "hold", agent="stubborn", timeout_minutes=0.01)
        pid = (await watch.started(run.run_id)).pid
        done = await watch.completed(run.run_id)
        elapsed = time.monotonic() - begin
        assert done.status == "timeout"
        assert done.exit_code == 128 + 9  # SIGKILL: SIGTERM was ignored
        assert elapsed >= 0.6 + 0.5
        assert not group_members(pid)


# --- backoff: the circuit breaker and usage limits -----------------------------------------

# fails only once the workspace holds a `.go` file, so the clock can move while it runs
GATED_FAILURE = ["sh", "-c", "while [ ! -e .go ]; do sleep 0.02; done; exit 1", "{prompt}"]


async def test_three_fast_failures_back_the_pool_off(home: Path) -> None:
    clock = Clock()
    async with runner_hub(home, clock=clock) as hub:
        watch = Watch(hub)
        runs = [await dispatch(hub, "exit 1", f"f/w/{n}") for n in range(3)]
        for r in runs:
            assert (await watch.completed(r.run_id)).status == "failed"
        tripped = (await watch.wait(on("runner.rate_limit_detected"))).message
        assert tripped.pool == "fake"
        assert tripped.until == NOON + 30 * 60
        assert "3 runs failed within 60s" in tripped.reason
        fleet = await watch.wait(lambda e: e.topic == "channel" and e.message.channel == "fleet")
        assert fleet.message.meta["pool"] == "fake"
        assert "12:30 UTC" in fleet.message.content
        backoff = (await status(hub)).backoff
        assert list(backoff) == ["fake"]
        assert backoff["fake"].startswith("until 12:30 UTC")
        # other agents are not affected
        other = await dispatch(hub, "exit 0", "f/w/shell", agent="shell")
        assert other.status == "running"
        waiting = await dispatch(hub, "exit 0", "f/w/next")
        assert waiting.status == "queued"
        assert waiting.reason.startswith("backoff until 12:30 UTC")
        clock.advance(29 * 60)
        await hub.bus.perform("runner.poke")
        assert (await run_info(hub, waiting.run_id)).status == "queued"
        clock.advance(60 + 1)
        await hub.bus.perform("runner.poke")
        assert (await watch.completed(waiting.run_id)).status == "completed"
        assert (await status(hub)).backoff == {}


async def test_slow_failures_do_not_trip_the_breaker(home: Path) -> None:
    clock = Clock()
    agents = {"gated": {"command": GATED_FAILURE, "prompt": "arg", "concurrency": 3}}
    async with runner_hub(home, agents=agents, clock=clock) as hub:
        watch = Watch(hub)
        runs = [await dispatch(hub, "go", f"s/w/{n}", agent="gated") for n in range(3)]
        assert [r.status for r in runs] == ["running"] * 3
        clock.advance(61)  # each failure now comes more than 60 s after its start
        root = home / "workspaces"
        for n in range(3):
            (root / f"s/w/{n}/.go").touch()
        for r in runs:
            assert (await watch.completed(r.run_id)).status == "failed"
        assert watch.messages("runner.rate_limit_detected") == []
        assert (await status(hub)).backoff == {}
        assert (await dispatch(hub, "go", "s/w/again", agent="gated")).status == "running"
        (root / "s/w/again/.go").touch()


async def test_a_usage_limit_backs_off_until_the_daily_reset(home: Path) -> None:
    clock = Clock()
    async with runner_hub(home, clock=clock) as hub:
        watch = Watch(hub)
        run = await dispatch(hub, "limit", "l/w/1")
        assert (await watch.completed(run.run_id)).status == "failed"
        tripped = (await watch.wait(on("runner.rate_limit_detected"))).message
        reset = NOON + 18 * 3600  # 06:00 UTC the next day
        assert (tripped.pool, tripped.until) == ("fake", reset)
        assert "usage limit" in tripped.reason
        assert (await status(hub)).backoff["fake"].startswith("until 06:00 UTC")
        waiting = await dispatch(hub, "exit 0", "l/w/2")
        assert (waiting.status, waiting.reason) == ("queued", "backoff until 06:00 UTC")
        clock.t = reset - 1
        await hub.bus.perform("runner.poke")
        assert (await run_info(hub, waiting.run_id)).status == "queued"
        clock.t = reset + 1
        await hub.bus.perform("runner.poke")
        assert (await watch.completed(waiting.run_id)).status == "completed"


# --- rates (with the injected clock) -------------------------------------------------------


async def test_min_delay_between_starts(home: Path) -> None:
    clock = Clock()
    agents = {"paced": fake_agent(rates={"min_delay": 60})}
    async with runner_hub(home, agents=agents, clock=clock) as hub:
        watch = Watch(hub)
        first = await dispatch(hub, "exit 0", "r/w/1", agent="paced")
        assert first.status == "running"
        second = await dispatch(hub, "exit 0", "r/w/2", agent="paced")
        assert (second.status, second.reason) == ("queued", "rate delay 60s")
        clock.advance(59.5)
        await hub.bus.perform("runner.poke")
        assert (await run_info(hub, second.run_id)).reason == "rate delay 1s"  # rounded up
        clock.advance(1.5)
        await hub.bus.perform("runner.poke")
        await watch.started(second.run_id)
        for r in (first, second):
            assert (await watch.completed(r.run_id)).status == "completed"


async def test_daily_limit_waits_for_the_reset(home: Path) -> None:
    clock = Clock()
    agents = {"daily": fake_agent(rates={"daily_limit": 1})}
    async with runner_hub(home, agents=agents, clock=clock) as hub:
        watch = Watch(hub)
        first = await dispatch(hub, "exit 0", "d/w/1", agent="daily")
        assert first.status == "running"
        second = await dispatch(hub, "exit 0", "d/w/2", agent="daily")
        assert (second.status, second.reason) == ("queued", "daily limit 1/1 until 06:00 UTC")
        assert (await watch.completed(first.run_id)).status == "completed"
        assert (await run_info(hub, second.run_id)).status == "queued"
        clock.t = NOON + 18 * 3600 + 1  # just past 06:00 UTC
        await hub.bus.perform("runner.poke")
        assert (await watch.completed(second.run_id)).status == "completed"


async def test_burst_window_shortens_the_delay_before_the_reset(home: Path) -> None:
    clock = Clock(NOON - 8 * 3600 - 60)  # 03:59 UTC: the burst window opens at 04:00
    rates = {"sustained_delay": 3600, "burst_window": 7200, "burst_delay": 10}
    async with runner_hub(home, agents={"bursty": fake_agent(rates=rates)}, clock=clock) as hub:
        watch = Watch(hub)
        first = await dispatch(hub, "exit 0", "b/w/1", agent="bursty")
        assert first.status == "running"
        second = await dispatch(hub, "exit 0", "b/w/2", agent="bursty")
        assert (second.status, second.reason) == ("queued", "rate delay 3600s")
        clock.advance(61)  # 04:00:01, inside the window: 10 s since the last start suffice
        await hub.bus.perform("runner.poke")
        await watch.started(second.run_id)
        third = await dispatch(hub, "exit 0", "b/w/3", agent="bursty")
        assert (third.status, third.reason) == ("queued", "rate delay 10s")
        clock.advance(10)
        await hub.bus.perform("runner.poke")
        for r in (first, second, third):
            assert (await watch.completed(r.run_id)).status == "completed"


# --- session queues (one workspace) --------------------------------------------------------

CATGATE_AGENT = {
    "command": [
        "sh",
        "-c",
        'cat; echo; echo "previous=${FLEETBUS_PREVIOUS_RUN_ID:-none}"; '
        "while [ ! -e .go ]; do sleep 0.02; done",
    ],
    "prompt": "stdin",
    "concurrency": 2,
}


def release(home: Path, workspace: str) -> None:
    """Let the `catgate` runs of `workspace` end."""
    (home / "workspaces" / workspace / ".go").touch()


async def test_queue_mode_waits_for_the_active_run(home: Path) -> None:
    async with runner_hub(home, agents={"catgate": CATGATE_AGENT}) as hub:
        watch = Watch(hub)
        first = await dispatch(hub, "one", "s/q/1", agent="catgate")
        second = await dispatch(hub, "two", "s/q/1", agent="catgate")
        assert first.status == "running"
        assert (second.status, second.reason) == ("queued", "session busy")
        # the agent's lane has room: only the session holds it back
        assert (await status(hub)).lanes["catgate"].running == 1
        await hub.bus.perform("runner.poke")
        assert (await run_info(hub, second.run_id)).status == "queued"
        release(home, "s/q/1")
        for r in (first, second):
            assert (await watch.completed(r.run_id)).status == "completed"
        assert watch.index("runner.run_completed", first.run_id) < watch.index(
            "runner.run_started", second.run_id
        )
        log = Path((await run_info(hub, second.run_id)).log or "").read_text()
        assert "two" in log and "continues" not in log and "previous=none" in log


async def test_followup_mode_continues_with_the_previous_output(home: Path) -> None:
    async with runner_hub(home, agents={"catgate": CATGATE_AGENT}) as hub:
        watch = Watch(hub)
        first = await dispatch(hub, "MARKER-ONE", "s/f/1", agent="catgate")
        second = await dispatch(
            hub, "SECOND-PROMPT", "s/f/1", agent="catgate", session_mode="followup"
        )
        assert (second.status, second.reason) == ("queued", "session busy")
        release(home, "s/f/1")
        assert (await watch.completed(first.run_id)).status == "completed"
        assert (await watch.completed(second.run_id)).status == "completed"
        log = Path((await run_info(hub, second.run_id)).log or "").read_text()
        assert f"This continues run {first.run_id}" in log
        assert "MARKER-ONE" in log
        assert "SECOND-PROMPT" in log
        assert f"previous={first.run_id}" in log
        assert log.index("MARKER-ONE") < log.index("SECOND-PROMPT")


async def test_interrupt_mode_cancels_the_active_run_and_starts_the_new_one(home: Path) -> None:
    async with runner_hub(home) as hub:
        watch = Watch(hub)
        first = await dispatch(hub, "sleep 60", "s/i/1")
        pid = (await watch.started(first.run_id)).pid
        waiting = await dispatch(hub, "exit 0", "s/i/1")
        assert waiting.status == "queued"
        second = await dispatch(hub, "exit 0", "s/i/1", session_mode="interrupt")
        assert second.status in ("running", "queued")
        done = await watch.completed(first.run_id)
        assert done.status == "cancelled"
        assert "interrupted" in done.reason
        cancelled = await watch.completed(waiting.run_id)
        assert cancelled.status == "cancelled"
        assert (await watch.completed(second.run_id)).status == "completed"
        assert not group_members(pid)


async def test_a_full_session_queue_drops_the_oldest_waiting_prompt(home: Path) -> None:
    async with runner_hub(home, session={"cap": 2, "drop": "old"}) as hub:
        watch = Watch(hub)
        active = await dispatch(hub, "sleep 60", "s/c/1")
        assert active.status == "running"
        waiting = [await dispatch(hub, f"echo {n}", "s/c/1") for n in range(4)]
        assert [w.status for w in waiting] == ["queued"] * 4
        for dropped in waiting[:2]:
            done = await watch.completed(dropped.run_id)
            assert done.status == "cancelled"
            assert "full" in done.reason
            assert "drop old" in (await run_info(hub, dropped.run_id)).reason
        current = await status(hub, workspace="s/c/1", status="queued")
        assert sorted(r.run_id for r in current.runs) == sorted(w.run_id for w in waiting[2:])
        result = await hub.bus.perform("runner.kill", {"workspace": "s/c/1"})
        assert (result.killed, result.cancelled) == (1, 2)


async def test_a_full_session_queue_refuses_the_newest_prompt(home: Path) -> None:
    async with runner_hub(home, session={"cap": 2, "drop": "new"}) as hub:
        active = await dispatch(hub, "sleep 60", "s/c/1")
        waiting = [await dispatch(hub, f"echo {n}", "s/c/1") for n in range(2)]
        assert [w.status for w in waiting] == ["queued"] * 2
        refused = await dispatch(hub, "echo late", "s/c/1")
        assert refused.status == "cancelled"
        assert "full" in refused.reason
        assert refused.run_id not in {w.run_id for w in waiting}
        assert (await run_info(hub, refused.run_id)).status == "cancelled"
        for w in waiting:
            assert (await run_info(hub, w.run_id)).status == "queued"
        assert (await run_info(hub, active.run_id)).status == "running"


async def test_debounce_merges_a_burst_into_one_run(home: Path) -> None:
    clock = Clock()
    async with runner_hub(home, clock=clock, session={"debounce_ms": 800}) as hub:
        watch = Watch(hub)
        first = await dispatch(hub, "sleep 60", "s/d/1")
        assert first.status == "running"  # an idle workspace starts at once
        burst = []
        for word in ("ALPHA", "BRAVO", "CHARLIE"):
            burst.append(await dispatch(hub, f"echo {word}", "s/d/1"))
            clock.advance(0.3)
        assert [b.status for b in burst] == ["queued"] * 3
        assert {b.run_id for b in burst} == {burst[0].run_id}
        assert "merged" not in burst[0].reason
        assert all("merged" in b.reason for b in burst[1:])
        await hub.bus.perform("runner.kill", {"run_id": first.run_id})
        assert (await watch.completed(first.run_id)).status == "cancelled"
        await hub.bus.perform("runner.poke")
        # still within the quiet period (its reason is checked by the drain-race test)
        assert (await run_info(hub, burst[0].run_id)).status == "queued"
        clock.advance(1)  # quiet for longer than the window
        await hub.bus.perform("runner.poke")
        assert (await watch.completed(burst[0].run_id)).status == "completed"
        log = Path((await run_info(hub, burst[0].run_id)).log or "").read_text()
        assert all(word in log for word in ("ALPHA", "BRAVO", "CHARLIE"))
        assert len(watch.messages("runner.run_started")) == 2
        assert (await status(hub)).total == 2


async def test_prompts_further_apart_than_the_debounce_are_separate_runs(home: Path) -> None:
    clock = Clock()
    async with runner_hub(home, clock=clock, session={"debounce_ms": 800}) as hub:
        first = await dispatch(hub, "sleep 60", "s/d/1")
        a = await dispatch(hub, "echo A", "s/d/1")
        clock.advance(0.9)
        b = await dispatch(hub, "echo B", "s/d/1")
        assert first.status == "running"
        assert a.run_id != b.run_id
        assert "merged" not in b.reason
        assert (await status(hub)).queued == 2


# --- idempotency and WorkspaceQuery --------------------------------------------------------


async def test_an_idempotency_key_returns_the_same_run(home: Path) -> None:
    async with runner_hub(home) as hub:
        watch = Watch(hub)
        one = await dispatch(hub, "exit 0", "i/w/1", idempotency_key="job-42")
        again = await dispatch(hub, "exit 0", "i/w/1", idempotency_key="job-42")
        assert again.run_id == one.run_id
        await watch.completed(one.run_id)
        later = await dispatch(hub, "echo other", "i/w/2", idempotency_key="job-42")
        assert (later.run_id, later.status) == (one.run_id, "completed")
        assert (await status(hub)).total == 1
        assert len(watch.messages("runner.run_started")) == 1


async def test_workspace_query_by_name_and_by_status(home: Path) -> None:
    async with runner_hub(home) as hub:
        watch = Watch(hub)
        done = await dispatch(hub, "exit 0", "org/repo/done")
        await watch.completed(done.run_id)
        busy = await dispatch(hub, "sleep 60", "org/repo/busy")
        root = home.resolve() / "workspaces"
        found = await hub.bus.query(WorkspaceQuery(name="org/repo/done"))
        assert [(w.name, w.status, w.run_id, w.agent) for w in found] == [
            ("org/repo/done", "completed", done.run_id, "fake")
        ]
        assert found[0].path == str(root / "org/repo/done")
        assert Path(found[0].path).is_dir()
        by_path = await hub.bus.query(WorkspaceQuery(name=str(root / "org/repo/busy")))
        assert [w.run_id for w in by_path] == [busy.run_id]
        running = await hub.bus.query(WorkspaceQuery(status="running"))
        assert [w.name for w in running] == ["org/repo/busy"]
        every = await hub.bus.query(WorkspaceQuery())
        assert [w.name for w in every] == ["org/repo/busy", "org/repo/done"]
        assert await hub.bus.query(WorkspaceQuery(name="org/repo/none")) == []
        with pytest.raises(InvalidInput) as err:
            await hub.bus.query(WorkspaceQuery(name="../etc"))
        assert err.value.errors[0]["field"] == "name"


async def test_status_says_why_a_run_waits_while_a_drain_is_under_way(home: Path) -> None:
    agents = {
        "fm": fake_agent(models=["m1"], model_args=["{model}"], concurrency={"total": 2, "m1": 1})
    }
    async with runner_hub(home, agents=agents) as hub:
        await dispatch(hub, "sleep 60;", "m/w/1", agent="fm", model="m1")
        second = await dispatch(hub, "exit 0;", "m/w/2", agent="fm", model="m1")
        assert second.reason == "lane full: fm:m1 1/1"
        seen: list[str] = []

        async def look() -> None:
            seen.append((await run_info(hub, second.run_id)).reason)

        for _ in range(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(look)  # its read is queued first ...
                tg.start_soon(hub.bus.perform, "runner.poke")  # ... then a drain begins
        assert seen == ["lane full: fm:m1 1/1"] * 5


# --- bad input: refused, nothing created ---------------------------------------------------


async def test_bad_dispatch_input_names_the_field_and_creates_nothing(home: Path) -> None:
    outside = home.parent / "outside"
    outside.mkdir(parents=True)
    agents = {"picky": fake_agent(models=["m1", "m2"], model_args=["{model}"])}
    async with runner_hub(home, agents=agents, dispatch={"max_prompt_bytes": 64}) as hub:
        root = home.resolve() / "workspaces"
        (root / "link").symlink_to(outside)
        before = tree(root), tree(home / "runs"), tree(outside)
        cases: list[tuple[dict[str, Any], str, list[str]]] = [
            (
                {"agent": "nope"},
                "agent",
                ["unknown agent 'nope'", "known:", "codex", "fake", "picky"],
            ),
            ({"agent": "picky", "model": "m9"}, "model", ["m9", "m1, m2"]),
            ({"priority": "urgent"}, "priority", ["critical", "high", "medium", "low"]),
            ({"session_mode": "later"}, "session_mode", ["queue", "followup", "interrupt"]),
            ({"workspace": "a/../b"}, "workspace", [".."]),
            ({"workspace": "../escape"}, "workspace", [".."]),
            ({"workspace": str(outside / "x")}, "workspace", ["outside the workspace root"]),
            ({"workspace": "/etc"}, "workspace", ["outside the workspace root"]),
            ({"workspace": "link/x"}, "workspace", ["outside the workspace root"]),
            ({"workspace": "a/b\x00c"}, "workspace", ["NUL"]),
            ({"workspace": "-rf/x"}, "workspace", ["'-rf'", "option"]),
            ({"workspace": "a/--help"}, "workspace", ["'--help'"]),
            ({"workspace": ""}, "workspace", ["empty"]),
            ({"workspace": "a/b c"}, "workspace", ["'b c'"]),
            ({"workspace": "a/b/c/d/e/f/g"}, "workspace", ["levels"]),
            ({"prompt": ""}, "prompt", ["empty"]),
            ({"prompt": "  \n "}, "prompt", ["empty"]),
            ({"prompt": "x" * 65}, "prompt", ["65 bytes", "64", "max_prompt_bytes"]),
            ({"prompt": "é" * 33}, "prompt", ["66 bytes"]),  # bytes, not characters
            ({"prompt": "--help me"}, "prompt", ["'-'"]),
            ({"prompt": "a\x00b"}, "prompt", ["NUL"]),
            ({"timeout_minutes": 0}, "timeout_minutes", []),
            ({"idempotency_key": ""}, "idempotency_key", []),
            ({"extra": 1}, "extra", []),
        ]
        for overrides, field, fragments in cases:
            payload = {"agent": "fake", "prompt": "exit 0", "workspace": "ok/w/1", **overrides}
            with pytest.raises(InvalidInput) as err:
                await hub.bus.perform("runner.dispatch", payload)
            assert [e["field"] for e in err.value.errors] == [field], (overrides, err.value)
            for fragment in fragments:
                assert fragment in err.value.message, (overrides, fragment, err.value.message)
        assert (await status(hub)).total == 0
        assert (tree(root), tree(home / "runs"), tree(outside)) == before
        # 64 bytes is still fine
        ok = await dispatch(hub, "exit 0;" + " " * 57, "ok/w/1")
        assert ok.status == "running"


async def test_an_agent_that_is_not_installed_is_refused(home: Path) -> None:
    agents = {"ghost": {"command": ["fleetbus-no-such-program-xyz", "{prompt}"]}}
    async with runner_hub(home, agents=agents) as hub:
        root = home.resolve() / "workspaces"
        before = tree(root)
        with pytest.raises(Refused, match=r"fleetbus-no-such-program-xyz.*not installed"):
            await dispatch(hub, "hello", "g/w/1", agent="ghost")
        assert (await status(hub)).total == 0
        assert tree(root) == before


# --- channel events ------------------------------------------------------------------------

META_KEY = re.compile(r"^[A-Za-z0-9_]+$")


async def test_start_and_finish_publish_agent_status_channel_events(home: Path) -> None:
    clock = Clock()
    agents = {"fm": fake_agent(models=["m1"], model_args=["{model}"])}
    async with runner_hub(home, agents=agents, clock=clock) as hub:
        watch = Watch(hub, ["channel", "runner.run_completed"])
        ok = await dispatch(hub, "exit 0", "a/b/c")
        await watch.completed(ok.run_id)
        bad = await dispatch(hub, "exit 3;", "a/b/d", agent="fm", model="m1")
        await watch.completed(bad.run_id)
        events = [e for e in watch.drain() if e.topic == "channel"]
        assert [e.message.channel for e in events] == ["agent.status"] * 4
        for e in events:
            meta = e.message.meta
            assert all(META_KEY.match(k) for k in meta), meta
            assert all(isinstance(v, str) for v in meta.values()), meta
            assert {"run_id", "workspace", "agent", "status"} <= set(meta)
            assert dict(e.context.origin) == ORIGIN
            assert "\n" not in e.message.content
        start, finish, start_bad, finish_bad = events
        assert (start.message.meta["run_id"], start.message.meta["status"]) == (
            ok.run_id,
            "running",
        )
        assert start.message.meta["workspace"] == "a/b/c"
        assert start.message.meta["agent"] == "fake"
        assert start.message.content == f"fake started a/b/c (run {ok.run_id})"
        assert finish.message.content == "fake finished a/b/c: completed in 0s, exit 0"
        assert finish.message.meta["status"] == "completed"
        assert finish.message.meta["exit_code"] == "0"
        assert start_bad.message.meta["model"] == "m1"
        assert finish_bad.message.meta["status"] == "failed"
        assert finish_bad.message.content == "fm finished a/b/d: failed in 0s, exit 3"


async def test_runner_messages_carry_the_dispatch_origin(home: Path) -> None:
    async with runner_hub(home) as hub:
        watch = Watch(hub, ["runner.*"])
        await hub.bus.perform("runner.stop")
        run = await dispatch(hub, "exit 0")
        await hub.bus.perform("runner.start")
        await watch.completed(run.run_id)
        mine = [e for e in watch.drain() if getattr(e.message, "run_id", None) == run.run_id]
        assert [e.topic for e in mine] == [
            "runner.run_queued",
            "runner.run_started",
            "runner.run_completed",
        ]
        assert all(dict(e.context.origin) == ORIGIN for e in mine)


# --- the agent's process: workspace, environment -------------------------------------------


async def test_an_agent_runs_in_its_workspace_with_only_allowed_environment(home: Path) -> None:
    env = {"FLEETBUS_SECRET_TEST": "x", "TOP_SECRET_TOKEN": "hunter2", "HOME": str(home.parent)}
    async with runner_hub(home, env=env) as hub:
        watch = Watch(hub)
        prompt = (
            "write out.txt hello\nenv TOP_SECRET_TOKEN\nenv HOME\nenv FLEETBUS_RUN_ID\n"
            "env FLEETBUS_WORKSPACE\nenv FLEETBUS_SECRET_TEST"
        )
        run = await dispatch(hub, prompt, "e/w/1")
        assert (await watch.completed(run.run_id)).status == "completed"
        workspace = home.resolve() / "workspaces" / "e/w/1"
        assert (workspace / "out.txt").read_text() == "hello\n"
        log = Path((await run_info(hub, run.run_id)).log or "").read_text()
        assert "TOP_SECRET_TOKEN unset" in log  # not in the fake agent's env allowlist
        assert f"HOME={home.parent}" in log  # in it
        assert f"FLEETBUS_RUN_ID={run.run_id}" in log
        assert f"FLEETBUS_WORKSPACE={workspace}" in log
        assert "FLEETBUS_SECRET_TEST unset" in log


# --- more of the queue ---------------------------------------------------------------------


async def test_queue_drained_is_announced_once_every_queued_run_started(home: Path) -> None:
    async with runner_hub(home) as hub:
        watch = Watch(hub, ["runner.*", "channel"])
        await hub.bus.perform("runner.stop")
        runs = [await dispatch(hub, "exit 0", f"q/w/{n}") for n in range(2)]
        await hub.bus.perform("runner.start")
        drained = (await watch.wait(on("runner.queue_drained"))).message
        assert drained.started == 2
        fleet = await watch.wait(lambda e: e.topic == "channel" and e.message.channel == "fleet")
        assert fleet.message.meta == {"channel": "fleet", "event": "queue_drained"}
        for r in runs:
            await watch.completed(r.run_id)
        # a run that starts at once was never queued: no second announcement
        await watch.completed((await dispatch(hub, "exit 0", "q/w/9")).run_id)
        assert len(watch.messages("runner.queue_drained")) == 1


async def test_status_filters_and_limits(home: Path) -> None:
    async with runner_hub(home) as hub:
        watch = Watch(hub)
        ok = await dispatch(hub, "exit 0", "st/w/1")
        bad = await dispatch(hub, "exit 2", "st/w/2", agent="shell")
        for r in (ok, bad):
            await watch.completed(r.run_id)
        everything = await status(hub)
        assert (everything.total, everything.completed, everything.failed) == (2, 1, 1)
        assert [r.run_id for r in everything.runs] == [bad.run_id, ok.run_id]  # newest first
        assert [r.run_id for r in (await status(hub, status="failed")).runs] == [bad.run_id]
        assert [r.run_id for r in (await status(hub, agent="fake")).runs] == [ok.run_id]
        by_ws = await status(hub, workspace="st/w/1")
        assert (by_ws.total, [r.run_id for r in by_ws.runs]) == (1, [ok.run_id])
        limited = await status(hub, limit=1)
        assert (limited.total, len(limited.runs)) == (2, 1)
        with pytest.raises(InvalidInput) as err:
            await status(hub, workspace="../x")
        assert err.value.errors[0]["field"] == "workspace"
        with pytest.raises(InvalidInput) as err:
            await status(hub, status="sleeping")
        assert err.value.errors[0]["field"] == "status"


async def test_kill_a_queued_run_by_id_cancels_only_it(home: Path) -> None:
    async with runner_hub(home) as hub:
        watch = Watch(hub)
        active = await dispatch(hub, "sleep 60", "kq/w/1")
        first = await dispatch(hub, "exit 0", "kq/w/1")
        second = await dispatch(hub, "exit 0", "kq/w/1")
        result = await hub.bus.perform("runner.kill", {"run_id": first.run_id})
        assert (result.killed, result.cancelled, result.frozen) == (0, 1, False)
        done = await watch.completed(first.run_id)
        assert (done.status, done.exit_code) == ("cancelled", None)
        assert (await run_info(hub, active.run_id)).status == "running"
        assert (await run_info(hub, second.run_id)).status == "queued"


# --- found while testing: these describe behaviour the runner should have ------------------


async def test_a_workspace_name_with_a_trailing_newline_is_refused(home: Path) -> None:
    async with runner_hub(home) as hub:
        root = home.resolve() / "workspaces"
        with pytest.raises(InvalidInput) as err:
            await dispatch(hub, "exit 0", "a/b/c\n")
        assert err.value.errors[0]["field"] == "workspace"
        assert tree(root) == set()


async def test_a_dropped_prompt_is_announced_on_the_status_channel(home: Path) -> None:
    """The assistant was told `queued`; when its prompt is dropped it must hear of it."""
    async with runner_hub(home, session={"cap": 1, "drop": "old"}) as hub:
        watch = Watch(hub, ["runner.*", "channel"])
        await dispatch(hub, "sleep 60", "dp/w/1")
        dropped = await dispatch(hub, "echo one", "dp/w/1")
        await dispatch(hub, "echo two", "dp/w/1")
        assert (await watch.completed(dropped.run_id)).status == "cancelled"
        event = await watch.wait(
            lambda e: e.topic == "channel" and e.message.meta.get("run_id") == dropped.run_id,
            timeout=2,
        )
        assert event.message.meta["status"] == "cancelled"
        assert dict(event.context.origin) == ORIGIN


async def test_a_timed_out_run_holds_its_workspace_until_its_processes_are_gone(
    home: Path,
) -> None:
    """max_concurrent 1: the next prompt must not start beside a run still being killed."""
    agents = {"stubborn": {"command": STUBBORN, "prompt": "arg"}}
    async with runner_hub(home, agents=agents, dispatch={"kill_grace": 2}) as hub:
        watch = Watch(hub)
        first = await dispatch(hub, "hold", "tw/w/1", agent="stubborn", timeout_minutes=0.01)
        nxt = await dispatch(hub, "exit 0", "tw/w/1")
        assert nxt.status == "queued"
        # another run ending makes the runner drain while the first is in its kill grace
        tick = await dispatch(hub, "sleep 1", "tw/w/2")
        await watch.completed(tick.run_id)
        await watch.completed(first.run_id)
        await watch.completed(nxt.run_id)
        assert watch.index("runner.run_completed", first.run_id) < watch.index(
            "runner.run_started", nxt.run_id
        )


async def test_merged_prompts_still_fit_on_the_agent_command_line(home: Path) -> None:
    """Each prompt fits a command-line argument; merging two must not make one that cannot."""
    clock = Clock()
    async with runner_hub(home, clock=clock, session={"debounce_ms": 800}) as hub:
        watch = Watch(hub)
        first = await dispatch(hub, "sleep 60", "mg/w/1")
        pad = "x" * 70_000  # ordinary text: the fake agent ignores it
        one = await dispatch(hub, f"echo ALPHA\n{pad}", "mg/w/1")
        two = await dispatch(hub, f"echo BRAVO\n{pad}", "mg/w/1")
        await hub.bus.perform("runner.kill", {"run_id": first.run_id})
        clock.advance(2)
        await hub.bus.perform("runner.poke")
        for r in {one.run_id, two.run_id}:
            done = await watch.completed(r)
            assert done.status == "completed", done.reason


async def test_a_followup_after_binary_output_still_runs(home: Path) -> None:
    """The previous run's output may hold a NUL byte; a command-line prompt cannot."""
    async with runner_hub(home) as hub:
        watch = Watch(hub)
        first = await dispatch(hub, "printf 'bin\\000ary\\n'", "nul/w/1", agent="shell")
        assert (await watch.completed(first.run_id)).status == "completed"
        second = await dispatch(hub, "echo NEXT;", "nul/w/1", session_mode="followup")
        done = await watch.completed(second.run_id)
        assert done.status in ("completed", "failed")
        # the runner still works
        third = await dispatch(hub, "exit 0", "nul/w/2")
        assert (await watch.completed(third.run_id)).status == "completed"


async def test_the_prompt_reaches_the_agent_as_argument_stdin_or_file(home: Path) -> None:
    agents = {
        "by-arg": {"command": ["sh", "-c", 'printf "%s\\n" "$0"', "{prompt}"], "prompt": "arg"},
        "by-stdin": {"command": ["sh", "-c", "cat"], "prompt": "stdin"},
        "by-file": {"command": ["sh", "-c", 'cat "$0"', "{prompt_file}"], "prompt": "file"},
    }
    async with runner_hub(home, agents=agents) as hub:
        watch = Watch(hub)
        prompt = "héllo $HOME `id` 'quoted' \"double\"; echo not-run"
        for name in agents:
            run = await dispatch(hub, prompt, f"pm/w/{name}", agent=name)
            assert (await watch.completed(run.run_id)).status == "completed"
            log = Path((await run_info(hub, run.run_id)).log or "").read_text()
            assert log.strip() == prompt, name  # verbatim: never through a shell


async def test_a_session_may_allow_more_than_one_run_at_once(home: Path) -> None:
    async with runner_hub(home, session={"max_concurrent": 2}) as hub:
        runs = [await dispatch(hub, "sleep 60", "mc/w/1") for _ in range(3)]
        assert [r.status for r in runs] == ["running", "running", "queued"]
        assert runs[2].reason == "session busy"


async def test_freezing_and_unfreezing_are_announced_once(home: Path) -> None:
    async with runner_hub(home) as hub:
        watch = Watch(hub, ["runner.frozen"])
        await hub.bus.perform("runner.stop")
        await hub.bus.perform("runner.stop")  # already frozen: nothing new to say
        await hub.bus.perform("runner.start")
        await hub.bus.perform("runner.kill", {})  # a kill of everything freezes too
        await watch.wait(lambda e: len(watch.seen) >= 3)
        assert [e.message.frozen for e in watch.seen] == [True, False, True]
