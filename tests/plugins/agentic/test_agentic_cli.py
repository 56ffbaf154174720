"""The issue's acceptance as a new user tries it: a real hub started by `fleetbus call`,
a temp git repository, an agent whose command commits a file."""

from __future__ import annotations

import json
import signal
from pathlib import Path
from typing import Any

from fleetbus.testing.gitrepo import git
from fleetbus.testing.hub import hub_process
from fleetbus.testing.processes import wait_for
from fleetbus.testing.pytest_plugin import CLI


def call(cli: CLI, action: str, payload: dict[str, Any]) -> Any:
    done = cli("call", action, json.dumps(payload))
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_dispatch_diff_merge_from_the_command_line(cli: CLI, source_repo: Path) -> None:
    task = call(
        cli,
        "agentic.dispatch",
        {"repo": str(source_repo), "task": "write hello.txt hi; commit add hello", "agent": "fake"},
    )
    assert task["status"] in ("running", "pending") and task["task_id"]

    def status() -> Any:
        return call(cli, "agentic.status", {"task_id": task["task_id"]})["tasks"][0]

    assert wait_for(lambda: status()["status"] == "completed", 30), status()
    diff = call(cli, "agentic.diff", {"task_id": task["task_id"], "stat_only": True})
    assert [f["path"] for f in diff["files"]] == ["hello.txt"] and diff["patch"] == ""
    merged = call(cli, "agentic.merge", {"task_id": task["task_id"], "strategy": "ff"})
    assert merged["strategy"] == "ff"
    assert git(source_repo, "log", "-1", "--format=%s", "main") == "add hello"


def test_a_bad_repo_path_is_one_line_and_creates_nothing(
    cli: CLI, tmp_path: Path, home: Path
) -> None:
    done = cli(
        "call", "agentic.dispatch", json.dumps({"repo": str(tmp_path / "nope"), "task": "x"})
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "does not exist" in lines[0], done.stderr
    assert "Traceback" not in done.stderr
    assert call(cli, "agentic.status", {})["tasks"] == []
    assert not (home / "workspaces").exists() or not any((home / "workspaces").iterdir())


def test_a_run_that_ends_while_the_hub_is_down_settles_its_task(
    cli: CLI, source_repo: Path, home: Path, env: dict[str, str]
) -> None:
    """Nothing depends on a message arriving: the hub is SIGKILLed while a task's run
    works, the run ends with no hub to hear it, and the next hub settles the task."""
    with hub_process(home, env) as hub:
        task = call(
            cli,
            "agentic.dispatch",
            {
                "repo": str(source_repo),
                "agent": "fake",
                "task": "wait gate.flag; write done.txt ok",
            },
        )
        hub.send_signal(signal.SIGKILL)
        hub.wait(10)
    # the agent finishes with no hub running
    (home / "workspaces" / task["workspace"] / "gate.flag").write_text("")

    def state() -> Any:
        return call(cli, "agentic.status", {"task_id": task["task_id"]})["tasks"][0]

    assert wait_for(lambda: state()["status"] == "completed", 30), {
        k: state()[k] for k in ("status", "reason", "runs", "log_tail")
    }
    log = (home / "hub.log").read_text() if (home / "hub.log").exists() else ""
    assert "done.txt" in state()["files_changed"], log[-3000:]  # leftovers on the branch
