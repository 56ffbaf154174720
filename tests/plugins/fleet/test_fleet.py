"""Fleet mode for real: a `nats-server` from the pip package on 127.0.0.1 (a free port, a
temporary store) and `fleetbus hub` processes in their own homes, running the fake agent.

A burst spreads over the hubs under the fleet-wide cap; a hub SIGKILLed mid-run has its
work finished elsewhere after `ack_wait`; one restarted within `ack_wait` keeps its runs
(nothing starts twice); NATS restarted mid-workload loses nothing; a task every hub
holding it lost is dead-lettered; the MCP session on hub A hears the end of a run that ran
on hub C. Every wait is bounded; every process started is stopped.
"""

from __future__ import annotations

import json
import signal
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from fleetbus.testing.fleet import FleetHubs, fleet_hubs
from fleetbus.testing.gitrepo import make_repo
from fleetbus.testing.hub import cli_command
from fleetbus.testing.mcp_wire import CHANNEL_METHOD, serve
from fleetbus.testing.runner import fake_agent

pytestmark = pytest.mark.slow

ORIGIN_ONLY: dict[str, Any] = {"agents": []}  # a hub that sends work and runs none


def dispatch(fleet: FleetHubs, node: str, workspace: str, prompt: str, **extra: Any) -> str:
    payload = {"agent": "fake", "workspace": workspace, "prompt": prompt, **extra}
    result = fleet.call(node, "fleet.dispatch", payload)
    assert result["status"] == "queued", result
    return str(result["task_id"])


def tasks_of(fleet: FleetHubs, node: str) -> dict[str, dict[str, Any]]:
    return {t["task_id"]: t for t in fleet.call(node, "fleet.tasks", {"limit": 1000})["tasks"]}


def wait_ended(fleet: FleetHubs, node: str, ids: list[str], timeout: float = 90) -> Any:
    def done(result: Any) -> bool:
        ended = {t["task_id"]: t for t in result["tasks"] if t["ended_at"] is not None}
        return all(i in ended for i in ids)

    result = fleet.wait(node, done, "every task ended", "fleet.tasks", {"limit": 1000}, timeout)
    return {t["task_id"]: t for t in result["tasks"]}


def fleet_runs(fleet: FleetHubs, nodes: str) -> list[dict[str, Any]]:
    """Every run of the fake agent on `nodes`, each with its node."""
    return [{**r, "node": n} for n in nodes for r in fleet.runs(n) if r["agent"] == "fake"]


def max_overlap(runs: list[dict[str, Any]]) -> int:
    """The most runs that were running at one moment (from their start and end times)."""
    edges = sorted(
        [(r["started_at"], 1) for r in runs if r["started_at"]]
        + [(r["ended_at"], -1) for r in runs if r["started_at"] and r["ended_at"]]
    )
    most = now = 0
    for _, step in edges:
        now += step
        most = max(most, now)
    return most


def test_a_burst_spreads_over_the_hubs_under_the_fleet_cap(tmp_path: Path) -> None:
    with fleet_hubs(tmp_path, ack_wait=5, caps={"fake": 4}) as fleet:
        for node in "abc":
            fleet.start(node, lanes=3)  # 9 lanes, a cap of 4
        ids = [dispatch(fleet, "a", f"burst/w{i}", "sleep 0.4; echo done") for i in range(12)]
        tasks = wait_ended(fleet, "a", ids)
        assert {tasks[i]["status"] for i in ids} == {"completed"}
        runs = fleet_runs(fleet, "abc")
        per_workspace = Counter(r["workspace"] for r in runs)
        assert per_workspace == {f"burst/w{i}": 1 for i in range(12)}, "a task ran twice"
        assert len({r["node"] for r in runs}) >= 2, runs
        assert max_overlap(runs) <= 4
        assert all(tasks[i]["delivery"] == 1 for i in ids)
        status = fleet.call("b", "fleet.status")
        assert sorted(n["node"] for n in status["nodes"]) == ["a", "b", "c"]
        assert status["depth"]["fake"] == {"critical": 0, "high": 0, "medium": 0, "low": 0}


def test_priority_holds_across_the_fleet(tmp_path: Path) -> None:
    with fleet_hubs(tmp_path, ack_wait=5, caps={"fake": 1}) as fleet:
        fleet.start("a", **ORIGIN_ONLY)
        first = dispatch(fleet, "a", "prio/first", "sleep 0.2")
        low = [dispatch(fleet, "a", f"prio/low{i}", "echo low", priority="low") for i in range(3)]
        crit = dispatch(fleet, "a", "prio/crit", "echo crit", priority="critical")
        fleet.start("b", lanes=1)  # one hub, one lane: it takes them one at a time
        tasks = wait_ended(fleet, "a", [first, crit, *low])
        runs = sorted(fleet.runs("b"), key=lambda r: r["started_at"])
        order = [r["workspace"] for r in runs]
        assert order.index("prio/crit") < min(order.index(f"prio/low{i}") for i in range(3))
        assert tasks[crit]["status"] == "completed"


def ended_by_channel(messages: list[dict[str, Any]]) -> Counter[str]:
    """How many times each task was reported ended in channel events (coalesced ones
    list theirs in `statuses`, `task:status,...`)."""
    ended: Counter[str] = Counter()
    for m in messages:
        if m.get("method") != CHANNEL_METHOD:
            continue
        meta = m["params"]["meta"]
        pairs = (
            [p.rsplit(":", 1) for p in meta["statuses"].split(",")]
            if "statuses" in meta
            else [[meta.get("run_id", ""), meta.get("status", "")]]
        )
        ended.update(task for task, status in pairs if status not in ("running", "queued"))
    return ended


def test_thirty_runs_through_one_mcp_session_spread_under_the_cap(tmp_path: Path) -> None:
    """The issue's acceptance: 30 one-second runs dispatched through hub A's MCP server
    all complete, on at least two hubs, never more than the fleet-wide cap at once, and
    that session receives every completion as a channel event (hub A's runs too)."""
    cap = 5
    with fleet_hubs(tmp_path, ack_wait=10, caps={"fake": cap}) as fleet:
        for node in "abc":
            fleet.start(node, lanes=3)
        with serve(fleet.envs["a"], tmp_path) as client:
            client.open_like_claude_code()
            ids = []
            for i in range(30):
                reply = client.call_tool(
                    "fleet_dispatch",
                    {"agent": "fake", "workspace": f"mcp/w{i}", "prompt": "sleep 1; echo hi"},
                )
                assert not reply["result"].get("isError"), reply
                ids.append(reply["result"]["structuredContent"]["task_id"])

            def all_ended(_m: dict[str, Any]) -> bool:
                return set(ended_by_channel(client.messages)) >= set(ids)

            client.wait_for(all_ended, timeout=120)
            seen = ended_by_channel(client.messages)
            assert {t: seen[t] for t in ids} == {t: 1 for t in ids}  # each exactly once
        tasks = wait_ended(fleet, "a", ids)
        assert {tasks[t]["status"] for t in ids} == {"completed"}
        runs = fleet_runs(fleet, "abc")
        assert Counter(r["workspace"] for r in runs) == {f"mcp/w{i}": 1 for i in range(30)}
        assert len({r["node"] for r in runs}) >= 2
        assert max_overlap(runs) <= cap


def test_the_mcp_session_on_a_hears_runs_that_ran_on_c(tmp_path: Path) -> None:
    with fleet_hubs(tmp_path, ack_wait=5) as fleet:
        fleet.start("a", **ORIGIN_ONLY)
        fleet.start("c", lanes=2)
        with serve(fleet.envs["a"], tmp_path) as client:
            client.open_like_claude_code()
            reply = client.call_tool(
                "fleet_dispatch", {"agent": "fake", "workspace": "mcp/c", "prompt": "echo hi"}
            )
            task_id = reply["result"]["structuredContent"]["task_id"]

            def ended(m: dict[str, Any]) -> bool:
                meta = m.get("params", {}).get("meta", {})
                return bool(
                    m.get("method") == CHANNEL_METHOD
                    and meta.get("task_id") == task_id
                    and meta.get("status") == "completed"
                )

            event = client.wait_for(ended, timeout=60)
            meta = event["params"]["meta"]
            assert (meta["node"], meta["run_id"], meta["agent"]) == ("c", task_id, "fake")
            assert meta["node_run_id"] == fleet.runs("c")[0]["run_id"]
            assert "fake on c finished mcp/c: completed, exit 0" in event["params"]["content"]


def test_tail_on_one_hub_follows_the_whole_fleet(tmp_path: Path) -> None:
    with fleet_hubs(tmp_path, ack_wait=5, heartbeat_s=0.3) as fleet:
        fleet.start("a", **ORIGIN_ONLY)
        fleet.start("c", lanes=1)
        assert fleet.call("c", "fleet.status")["mirroring"] is False  # nobody follows yet
        argv = cli_command("tail", "--topic", "fleet.remote", "--json", "--max", "2")
        with subprocess.Popen(
            argv, env=fleet.envs["a"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL, text=True,
        ) as tail:  # fmt: skip
            try:
                fleet.wait("a", lambda s: s["following"], "following")
                fleet.wait("c", lambda s: s["mirroring"], "mirroring")
                task = dispatch(fleet, "a", "tail/w0", "echo hi")
                out, err = tail.communicate(timeout=60)
            finally:
                if tail.poll() is None:
                    tail.kill()
        lines = [json.loads(line) for line in out.splitlines()]
        assert [m["topic"] for m in lines] == ["fleet.remote", "fleet.remote"], (out, err)
        assert {m["data"]["node"] for m in lines} == {"c"}
        topics = [m["data"]["remote_topic"] for m in lines]
        assert topics == ["runner.run_started", "runner.run_completed"], topics
        assert lines[1]["data"]["data"]["workspace"] == "tail/w0"
        wait_ended(fleet, "a", [task])
        fleet.wait("a", lambda s: not s["following"], "no longer following")


def test_a_hub_killed_mid_run_has_its_work_finished_elsewhere(tmp_path: Path) -> None:
    with fleet_hubs(tmp_path, ack_wait=3) as fleet:
        fleet.start("a", **ORIGIN_ONLY)
        fleet.start("b", lanes=4)
        ids = [dispatch(fleet, "a", f"lost/w{i}", "sleep 4; echo done") for i in range(3)]
        fleet.wait("b", lambda s: s["running_here"] == 3, "running all three")
        fleet.kill("b")  # SIGKILL: no goodbye, its acks stop
        fleet.start("c", lanes=4)
        tasks = wait_ended(fleet, "a", ids)
        for i in ids:
            assert tasks[i]["status"] == "completed", tasks[i]
            assert (tasks[i]["node"], tasks[i]["delivery"]) == ("c", 2)
        # every task ended exactly once as the assistant sees it
        ended = [t for t in fleet.call("a", "fleet.tasks", {"limit": 100})["tasks"]]
        assert Counter(t["task_id"] for t in ended) == {i: 1 for i in ids}
        assert len(fleet.runs("c")) == 3


def test_a_hub_back_within_ack_wait_keeps_its_runs(tmp_path: Path) -> None:
    with fleet_hubs(tmp_path, ack_wait=15) as fleet:
        fleet.start("a", **ORIGIN_ONLY)
        fleet.start("b", lanes=2)
        ids = [dispatch(fleet, "a", f"back/w{i}", "sleep 3; echo done") for i in range(2)]
        fleet.wait("b", lambda s: s["running_here"] == 2, "running both")
        fleet.kill("b")
        fleet.start("c", lanes=2)  # free lanes elsewhere: it must not get them
        fleet.start("b", lanes=2)
        tasks = wait_ended(fleet, "a", ids)
        for i in ids:
            assert (tasks[i]["status"], tasks[i]["node"], tasks[i]["delivery"]) == (
                "completed",
                "b",
                1,
            )
        assert [r for r in fleet.runs("c") if r["agent"] == "fake"] == []
        assert Counter(r["workspace"] for r in fleet.runs("b")) == {"back/w0": 1, "back/w1": 1}


def test_nats_restarted_mid_workload_loses_nothing(tmp_path: Path) -> None:
    with fleet_hubs(tmp_path, ack_wait=10) as fleet:
        fleet.start("a", **ORIGIN_ONLY)
        fleet.start("b", lanes=2)
        ids = [dispatch(fleet, "a", f"restart/w{i}", "sleep 1; echo done") for i in range(6)]
        fleet.wait("b", lambda s: s["running_here"] >= 1, "running")
        fleet.server.restart()
        tasks = wait_ended(fleet, "a", ids)
        assert {tasks[i]["status"] for i in ids} == {"completed"}
        assert Counter(r["workspace"] for r in fleet.runs("b")) == {
            f"restart/w{i}": 1 for i in range(6)
        }


def test_a_task_every_holder_lost_is_dead_lettered(tmp_path: Path) -> None:
    with fleet_hubs(tmp_path, ack_wait=2, max_deliver=2) as fleet:
        fleet.start("a", **ORIGIN_ONLY)
        fleet.start("b", lanes=1)
        task = dispatch(fleet, "a", "dead/w0", "sleep 30")
        fleet.wait("b", lambda s: s["running_here"] == 1, "running it")
        fleet.kill("b")
        fleet.start("c", lanes=1)
        fleet.wait("c", lambda s: s["running_here"] == 1, "running it", timeout=30)
        fleet.kill("c")
        fleet.start("d", lanes=1)  # JetStream gives up on it when a live hub asks for work
        tasks = wait_ended(fleet, "a", [task], timeout=60)
        assert tasks[task]["status"] == "dead_lettered"
        assert "after 2 deliveries" in tasks[task]["reason"]
        assert fleet.runs("d") == []
        records = [r for n in "ad" for r in fleet.call(n, "fleet.records")["records"]]
        assert [r["what"] for r in records] == ["dead_lettered"]  # reported by one hub


def test_a_message_that_is_not_a_dispatch_is_terminated(tmp_path: Path) -> None:
    import anyio
    import nats

    with fleet_hubs(tmp_path, ack_wait=2) as fleet:
        fleet.start("b", lanes=1)

        async def publish() -> None:
            nc = await nats.connect(fleet.server.url)
            js = nc.jetstream()
            await js.publish("fleetbus.dispatch.fake.medium", b'{"not": "a task"}')
            await nc.close()

        anyio.run(publish)
        status = fleet.wait(
            "b", lambda s: s["depth"]["fake"]["medium"] == 0, "taking it", "fleet.status"
        )
        assert status["running_here"] == 0
        records = fleet.call("b", "fleet.records")["records"]
        assert records and records[0]["what"] == "refused"
        assert "fleetbus.dispatch.fake.medium" in records[0]["detail"]
        task = dispatch(fleet, "b", "after/w0", "echo ok")  # the queue still works
        assert wait_ended(fleet, "b", [task])[task]["status"] == "completed"


def test_an_unreachable_nats_leaves_the_hub_in_local_mode(tmp_path: Path) -> None:
    with fleet_hubs(tmp_path) as fleet:
        fleet.server.stop()
        fleet.start("a", wait_connected=False)
        status = fleet.wait("a", lambda s: "cannot be reached" in s["note"], "saying why")
        assert status["connected"] is False
        assert status["note"].startswith("local mode:")
        assert "\n" not in status["note"]
        run = fleet.call("a", "runner.dispatch", {"agent": "fake", "workspace": "l/w",
                                                  "prompt": "echo local"})  # fmt: skip
        assert run["status"] in ("running", "queued")
        with pytest.raises(Exception, match="not reachable"):
            fleet.call("a", "fleet.dispatch", {"agent": "fake", "workspace": "f/w",
                                               "prompt": "x"})  # fmt: skip
        fleet.server.start()  # it connects once NATS is there
        fleet.wait("a", lambda s: s["connected"], "connected", timeout=60)
        assert "cannot be reached" in fleet.log("a")


def test_wrong_credentials_are_one_clear_line(tmp_path: Path) -> None:
    with fleet_hubs(tmp_path, token="s3cret-token") as fleet:
        fleet.start("a", env={"FLEETBUS_NATS_CREDENTIALS": "wrong-token"}, wait_connected=False)
        status = fleet.wait("a", lambda s: "credentials" in s["note"], "refusing")
        assert "refused the credentials" in status["note"]
        assert "wrong-token" not in status["note"] and "wrong-token" not in fleet.log("a")
        fleet.kill("a", signal.SIGTERM)
        fleet.start("a", env={"FLEETBUS_NATS_CREDENTIALS": "s3cret-token"})


def test_a_stream_made_with_other_settings_is_refused_by_name(tmp_path: Path) -> None:
    import anyio
    import nats

    with fleet_hubs(tmp_path) as fleet:

        async def make() -> None:
            nc = await nats.connect(fleet.server.url)
            await nc.jetstream().add_stream(
                name="FLEETBUS_DISPATCH", subjects=["fleetbus.dispatch.>"]
            )
            await nc.close()

        anyio.run(make)
        fleet.start("a", wait_connected=False)
        status = fleet.wait("a", lambda s: "retention" in s["note"], "refusing the stream")
        assert "FLEETBUS_DISPATCH" in status["note"]
        assert "retention=limits" in status["note"] and "workqueue" in status["note"]
        assert status["connected"] is False


def test_an_agentic_task_on_a_url_runs_on_any_hub(tmp_path: Path) -> None:
    source = make_repo(tmp_path / "src" / "proj")
    with fleet_hubs(tmp_path / "f", ack_wait=10) as fleet:
        fleet.start("a", **ORIGIN_ONLY)
        fleet.start("c", lanes=2)
        request = {"repo": f"file://{source}", "task": "write hello.txt hi; commit add hello",
                   "agent": "fake", "labels": ["fake"]}  # fmt: skip
        answer = fleet.call("a", "fleet.dispatch_task", request)
        assert answer["reason"] == "on the fleet's queue: any hub may take it"
        task = wait_ended(fleet, "a", [answer["task_id"]])[answer["task_id"]]
        assert (task["status"], task["node"], task["agent"]) == ("completed", "c", "fake")
        on_c = fleet.call("c", "agentic.status", {})["tasks"]
        assert [t["status"] for t in on_c] == ["completed"]
        assert on_c[0]["task_id"] == task["run_id"]  # the task's id on the hub that ran it
        with pytest.raises(Exception, match="no hub of the fleet can take it"):
            fleet.call("a", "fleet.dispatch_task", {**request, "labels": ["fortran"]})


def test_an_agentic_task_on_a_local_path_waits_for_its_hub(tmp_path: Path) -> None:
    source = make_repo(tmp_path / "src" / "proj")
    with fleet_hubs(tmp_path / "f", ack_wait=10) as fleet:
        fleet.start("a", **ORIGIN_ONLY)
        fleet.start("b", lanes=2)  # free lanes, but not the machine of the path (as far
        # as the fleet knows: every hub here shares one disk, the lane is what decides)
        request = {"repo": str(source), "task": "write hello.txt hi", "agent": "fake"}
        answer = fleet.call("a", "fleet.dispatch_task", request)
        assert "only this hub can run it" in answer["reason"]
        assert "this hub runs no agents" in answer["reason"]
        fleet.kill("a", signal.SIGTERM)
        fleet.start("a", lanes=1)  # now a runs agents: it takes its own task
        task = wait_ended(fleet, "a", [answer["task_id"]])[answer["task_id"]]
        assert (task["status"], task["node"]) == ("completed", "a")
        assert fleet.call("b", "agentic.status", {})["tasks"] == []


def test_a_model_with_its_own_lane_limit_has_its_own_subject(tmp_path: Path) -> None:
    fm = fake_agent(models=["m1", "m2"], model_args=["{model}"], concurrency={"total": 3, "m1": 1})
    with fleet_hubs(tmp_path, ack_wait=10, manifest={"agents": {"fm": fm}}) as fleet:
        fleet.start("a", **ORIGIN_ONLY)
        for node in "bc":
            fleet.start(node, lanes=3, agents=["fm"])
        status = fleet.call("b", "fleet.status")
        assert set(status["depth"]) >= {"fm", "fm--m1"}  # m2 has no lane of its own
        ids = [
            fleet.call("a", "fleet.dispatch", {"agent": "fm", "model": "m1",
                       "workspace": f"model/w{i}", "prompt": "sleep 0.5;"})["task_id"]
            for i in range(4)
        ]  # fmt: skip
        tasks = wait_ended(fleet, "a", ids)
        assert {tasks[i]["status"] for i in ids} == {"completed"}
        runs = [{**r, "node": n} for n in "bc" for r in fleet.runs(n)]
        assert {r["model"] for r in runs} == {"m1"}
        for node in "bc":  # each hub held its m1 lane (1 at a time), so both took some
            mine = [r for r in runs if r["node"] == node]
            assert mine and max_overlap(mine) == 1, runs


def test_a_superseded_deliverys_late_result_is_kept_but_never_wins(tmp_path: Path) -> None:
    with fleet_hubs(tmp_path, ack_wait=2) as fleet:
        fleet.start("a", **ORIGIN_ONLY)
        fleet.start("b", lanes=1)
        task = dispatch(fleet, "a", "late/w0", "sleep 4; echo done")
        fleet.wait("b", lambda s: s["running_here"] == 1, "running it")
        fleet.kill("b")  # its agent lives on; after ack_wait the task goes to c
        fleet.start("c", lanes=1)
        fleet.wait("c", lambda s: s["running_here"] == 1, "running it", timeout=30)
        fleet.start("b", lanes=1)  # back too late: its run ends, superseded
        late = fleet.wait(
            "b", lambda r: r["records"], "recording the late result", "fleet.records"
        )["records"]
        tasks = wait_ended(fleet, "a", [task])
        assert (tasks[task]["status"], tasks[task]["node"], tasks[task]["delivery"]) == (
            "completed",
            "c",
            2,
        )
        assert [r["what"] for r in late] == ["late"]
        detail = json.loads(late[0]["detail"])
        assert (detail["delivery"], detail["superseded_by"], detail["node"]) == (1, 2, "b")
        assert len(fleet.call("a", "fleet.tasks")["tasks"]) == 1
