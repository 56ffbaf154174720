"""`runner.status`'s counts are kept in memory (`RunCounts`), not read from SQLite: they must
equal the store's own count of its runs by status after any mix of dispatches, starts,
completions, failures, questions, timeouts, kills, refusals, queued and frozen runs, after
a restart and after the adoption of runs the previous hub left going.

Real hubs with the fake agent, real SQLite; every comparison is made once the changes it
covers are done (their calls returned, their messages seen) and under the runner's state
lock (no drain, settle or kill half done); every wait is on a bus message.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio
import pytest
import yaml

from fleetbus.bus.hub import Hub
from fleetbus.plugins.runner import runner_of
from fleetbus.testing.hub import embedded_hub, isolated_env
from fleetbus.testing.runner import Watch, dispatch, on, runner_hub, status

pytestmark = pytest.mark.anyio

STATUSES = ("queued", "running", "completed", "failed", "blocked", "cancelled", "timeout")
# one waiting prompt per workspace; the next is refused (inserted as cancelled)
SESSION = {"cap": 1, "drop": "new"}


async def stored_counts(hub: Hub) -> dict[str, int]:
    """The runs of the store by status, counted by SQLite."""

    def read(db: Any) -> dict[str, int]:
        sql = "SELECT status, count(*) FROM runs GROUP BY status"
        return {str(r[0]): int(r[1]) for r in db.execute(sql)}

    return await hub.store.read(read)


async def assert_counts_agree(hub: Hub) -> dict[str, int]:
    """runner.status's counts (kept in memory) equal the store's; the store's counts."""
    runner = runner_of(hub)
    assert runner.state.counts.loaded
    async with runner.state.lock:  # no dispatch, drain, settle or kill half done
        stored = await stored_counts(hub)
        for limit in (0, 5):  # the counts never depend on how many runs are listed
            shown = await status(hub, limit=limit)
            assert {s: getattr(shown, s) for s in STATUSES} == {
                s: stored.get(s, 0) for s in STATUSES
            }, f"in memory {runner.state.counts.by_status}, stored {stored}"
            assert shown.total == sum(stored.values())
        # a filtered status still counts in SQLite: the same numbers for the one agent
        only_fake = await status(hub, agent="fake", limit=0)
        assert {s: getattr(only_fake, s) for s in STATUSES} == {
            s: stored.get(s, 0) for s in STATUSES
        }
    return stored


@asynccontextmanager
async def hub_leaving_runs(home: Path) -> AsyncIterator[Hub]:
    """A hub with `runner_hub`'s settings that, unlike it, leaves its runs going when it
    stops (as `fleetbus stop` does): the next hub adopts them."""
    config = home.parent / "fleetbus.yaml"
    home.parent.mkdir(parents=True, exist_ok=True)
    spec = {"kill_grace": 2, "session": {"debounce_ms": 0, **SESSION}}
    config.write_text(yaml.safe_dump({"agents": {}, "dispatch": spec}))
    async with embedded_hub(home, env=isolated_env(home, config=config), serve_socket=False) as hub:
        yield hub


async def test_counts_in_memory_match_the_store_after_a_mixed_workload(home: Path) -> None:
    async with runner_hub(home, session=SESSION) as hub:
        watch = Watch(hub)
        assert await assert_counts_agree(hub) == {}
        ended: dict[str, str] = {}  # run_id -> the status it must end with
        # more runs than the fake agent's 4 lanes, dispatched side by side: some queue
        workload = [
            ("exit 0", "m/ok/1", "completed"),
            ("exit 0", "m/ok/2", "completed"),
            ("exit 0", "m/ok/3", "completed"),
            ("exit 3", "m/bad/1", "failed"),
            ("exit 4", "m/bad/2", "failed"),
            ("question which database?", "m/ask/1", "blocked"),
            ("sleep 60", "m/slow/1", "timeout"),
            ("sleep 60", "m/kill/1", "cancelled"),
            ("sleep 60", "m/kill/2", "cancelled"),
        ]
        got: dict[str, Any] = {}

        async def one(prompt: str, workspace: str) -> None:
            timeout = {"timeout_minutes": 0.01} if "slow" in workspace else {}
            got[workspace] = await dispatch(hub, prompt, workspace, **timeout)

        async with anyio.create_task_group() as tg:
            for prompt, workspace, _ in workload:
                tg.start_soon(one, prompt, workspace)
        for _, workspace, end in workload:
            ended[got[workspace].run_id] = end
        assert "running" in {r.status for r in got.values()}  # the rest wait for lanes
        await assert_counts_agree(hub)

        # kills (running or still queued) while the rest complete, fail and time out
        for workspace in ("m/kill/1", "m/kill/2"):
            await hub.bus.perform("runner.kill", {"workspace": workspace})
        for run_id, end in ended.items():
            assert (await watch.completed(run_id)).status == end, run_id
        stored = await assert_counts_agree(hub)
        assert stored == {"completed": 3, "failed": 2, "blocked": 1, "timeout": 1, "cancelled": 2}

        # a session queue: one running, one waiting, the next refused (lanes are free)
        busy = await dispatch(hub, "sleep 60", "m/session/1")
        waiting = await dispatch(hub, "exit 0", "m/session/1")
        refused = await dispatch(hub, "exit 0", "m/session/1")
        assert (busy.status, waiting.status, refused.status) == ("running", "queued", "cancelled")
        await assert_counts_agree(hub)
        await hub.bus.perform("runner.kill", {"run_id": busy.run_id})
        for run_id, end in ((busy.run_id, "cancelled"), (waiting.run_id, "completed")):
            assert (await watch.completed(run_id)).status == end, run_id
        stored = await assert_counts_agree(hub)
        assert stored == {"completed": 4, "failed": 2, "blocked": 1, "timeout": 1, "cancelled": 4}

        # frozen: new runs wait; a kill of one of them cancels it in the queue
        await hub.bus.perform("runner.stop")
        frozen = [await dispatch(hub, "exit 0", f"m/frozen/{n}") for n in range(3)]
        assert {r.status for r in frozen} == {"queued"}
        await hub.bus.perform("runner.kill", {"run_id": frozen[0].run_id})
        assert await assert_counts_agree(hub) == {**stored, "queued": 2, "cancelled": 5}
        # unfrozen: they start and complete
        await hub.bus.perform("runner.start")
        for r in frozen[1:]:
            assert (await watch.completed(r.run_id)).status == "completed"
        assert await assert_counts_agree(hub) == {**stored, "completed": 6, "cancelled": 5}


async def test_counts_are_right_after_a_restart_and_the_adoption_of_live_runs(
    home: Path,
) -> None:
    gate = "gate"  # the fake agent's `wait gate` waits for this file in its workspace
    async with hub_leaving_runs(home) as hub:
        watch = Watch(hub)
        done = await dispatch(hub, "exit 0", "r/done/1")
        assert (await watch.completed(done.run_id)).status == "completed"
        live = [await dispatch(hub, f"wait {gate}", f"r/live/{n}") for n in range(2)]
        for r in live:
            await watch.started(r.run_id)
        await hub.bus.perform("runner.stop")
        frozen = await dispatch(hub, "exit 0", "r/frozen/1")
        assert frozen.status == "queued"
        before = await assert_counts_agree(hub)
        assert before == {"completed": 1, "running": 2, "queued": 1}
    # the hub is gone, its two runs go on: the next hub (frozen too) adopts them, and
    # counts them
    async with runner_hub(home, session=SESSION, env={"FLEETBUS_FROZEN": "1"}) as hub:
        watch = Watch(hub)
        runner = runner_of(hub)
        assert sorted(runner.state.active) == sorted(r.run_id for r in live)
        assert await assert_counts_agree(hub) == before
        for n in range(2):
            (home / "workspaces" / f"r/live/{n}" / gate).write_text("open")
        for r in live:
            assert (await watch.completed(r.run_id)).status == "completed"
        assert await assert_counts_agree(hub) == {"completed": 3, "queued": 1}
        await hub.bus.perform("runner.start")
        assert (await watch.completed(frozen.run_id)).status == "completed"
        assert await assert_counts_agree(hub) == {"completed": 4}
    # and a third hub, with nothing left going, counts the same from the store
    async with runner_hub(home, session=SESSION) as hub:
        watch = Watch(hub)
        assert await assert_counts_agree(hub) == {"completed": 4}
        late = await dispatch(hub, "exit 5", "r/late/1")
        await watch.wait(on("runner.run_completed", late.run_id))
        assert await assert_counts_agree(hub) == {"completed": 4, "failed": 1}
