"""A hub without `fleet.url` pays nothing for fleet mode and says so; the runner's
`FreeSlots` answer (what a fleet hub pulls by) follows lanes, the queue, frozen state and
backoff; the `fleet` section refuses what is not a NATS URL. Embedded hubs, real SQLite,
the fake agent."""

from __future__ import annotations

from pathlib import Path

import anyio
import pytest
import yaml

from fleetbus.bus import Refused
from fleetbus.plugins.runner import runner_of
from fleetbus.plugins.runner.models import FreeSlots
from fleetbus.testing.pytest_plugin import CLI
from fleetbus.testing.runner import Watch, dispatch, on, runner_hub

pytestmark = pytest.mark.anyio


async def test_without_a_url_the_fleet_is_idle_and_says_so(home: Path) -> None:
    async with runner_hub(home) as hub:
        status = await hub.bus.perform("fleet.status")
        assert (status.configured, status.connected) == (False, False)
        assert status.note.startswith("fleet mode is off: no fleet.url")
        with pytest.raises(Refused, match=r"fleet mode is off.*use runner\.dispatch"):
            await hub.bus.perform(
                "fleet.dispatch", {"agent": "fake", "workspace": "a/b", "prompt": "x"}
            )
        assert (await hub.bus.perform("fleet.tasks", {})).tasks == []
        names = {s["name"] for s in hub.bus.subscriber_stats()}
        assert not any(n.startswith("fleet:") for n in names), names


async def test_free_slots_follow_lanes_queue_frozen_state_and_backoff(home: Path) -> None:
    async with runner_hub(home, dispatch={"total_concurrency": 3}) as hub:
        runner = runner_of(hub)

        async def free(agent: str = "fake", model: str | None = None) -> int:
            return int(await hub.bus.query(FreeSlots(agent=agent, model=model)))

        assert await free() == 3  # the total (3) is below fake's own lane (4)
        assert await free("no-such-agent") == 0
        watch = Watch(hub)
        first = await dispatch(hub, "sleep 30", workspace="fs/w1")
        await watch.wait(on("runner.run_started", first.run_id))
        assert await free() == 2
        await hub.bus.perform("runner.stop")  # frozen: nothing may start
        assert await free() == 0
        queued = await dispatch(hub, "echo x", workspace="fs/w2")
        assert queued.status == "queued"
        await hub.bus.perform("runner.start")
        await watch.wait(on("runner.run_started", queued.run_id))
        assert await free() == 1
        runner.state.pools["fake"].back_off(runner.clock.now() + 60, "test")
        assert await free() == 0
        await hub.bus.perform("runner.kill", {})
        with anyio.fail_after(10):
            while runner.state.lanes.running_total:
                await watch.wait(on("runner.run_completed"))
                watch.seen.clear()


def test_a_fleet_url_that_is_not_nats_is_one_clear_line(cli: CLI, tmp_path: Path) -> None:
    config = tmp_path / "fleetbus.yaml"
    config.write_text(yaml.safe_dump({"fleet": {"url": "http://127.0.0.1:4222"}}))
    result = cli("call", "fleet.status", FLEETBUS_CONFIG=str(config))
    assert result.returncode != 0
    assert "fleet.url" in result.stderr and "must be a nats://" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr
