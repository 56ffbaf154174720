"""The runner's process recipe (processes.py) on its own: real processes, no hub."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

from fleetbus.plugins.runner import processes

SPAWN_WITH_STDIO_CLOSED = """
import os, sys
from pathlib import Path
from fleetbus.plugins.runner import processes
run_dir = Path(sys.argv[1])
for fd in (0, 1, 2):
    os.close(fd)
pid = processes.spawn(
    ["sh", "-c", "read line; echo out:$line; echo err:$line >&2; ls /proc/self/fd > fds"],
    cwd=run_dir,
    env={"PATH": os.environ["PATH"]},
    run_dir=run_dir,
    log=run_dir / "output.log",
    stdin=run_dir / "prompt.txt",
)
os._exit(processes.exit_code_of(os.waitpid(pid, 0)[1]))
"""


def spawned(run_dir: Path, argv: list[str], prompt: str = "hello") -> int:
    (run_dir / "prompt.txt").write_text(prompt + "\n")
    pid = processes.spawn(
        argv,
        cwd=run_dir,
        env={"PATH": os.environ["PATH"]},
        run_dir=run_dir,
        log=run_dir / "output.log",
        stdin=run_dir / "prompt.txt",
    )
    return processes.exit_code_of(os.waitpid(pid, 0)[1])


def test_the_prompt_is_stdin_and_both_streams_append_to_the_log(tmp_path: Path) -> None:
    (tmp_path / "output.log").write_text("before\n")
    code = spawned(tmp_path, ["sh", "-c", "read line; echo out:$line; echo err:$line >&2; exit 3"])
    assert code == 3
    assert (tmp_path / "output.log").read_text() == "before\nout:hello\nerr:hello\n"
    assert processes.read_int(tmp_path / "exit") == 3
    pid, start = processes.read_pid_file(tmp_path / "pid")
    assert pid is not None and start is not None


def inheritable_descriptors() -> set[int]:
    """This process's descriptors above 2 that a child inherits (the test runner's own)."""
    found = set()
    for name in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            if int(name) > 2 and os.get_inheritable(int(name)):
                found.add(int(name))
    return found


def test_no_descriptor_the_spawn_opened_leaks_into_the_agent(tmp_path: Path) -> None:
    inherited = inheritable_descriptors()
    code = spawned(tmp_path, ["sh", "-c", "ls /proc/self/fd > fds"])
    assert code == 0
    seen = {int(fd) for fd in (tmp_path / "fds").read_text().split()}
    # 0, 1, 2, what this process passes on anyway, and the one ls reads the listing through
    extra = seen - {0, 1, 2} - inherited
    assert len(extra) == 1, (seen, inherited)


def test_a_hub_with_its_standard_streams_closed_still_wires_the_agent(tmp_path: Path) -> None:
    # the files the child gets as 0, 1 and 2 would be opened as 0, 1 and 2 themselves
    (tmp_path / "prompt.txt").write_text("hello\n")
    done = subprocess.run(
        [sys.executable, "-c", SPAWN_WITH_STDIO_CLOSED, str(tmp_path)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        timeout=60,
    )
    assert done.returncode == 0
    assert (tmp_path / "output.log").read_text() == "out:hello\nerr:hello\n"
    # 0, 1, 2 and ls's own: the copies made above 2 were not passed on
    assert len((tmp_path / "fds").read_text().split()) == 4


def test_the_exit_code_replaces_whatever_the_agent_left_at_the_exit_file(tmp_path: Path) -> None:
    # a symlink (dangling, or to a file of the user's) is removed, never written through
    run_dir, target = tmp_path / "run", tmp_path / "precious"
    run_dir.mkdir()
    target.write_text("keep\n")
    for link_to in (tmp_path / "nowhere", target):
        code = spawned(run_dir, ["sh", "-c", f"ln -sf {link_to} exit; exit 5"])
        assert code == 5
        assert not (run_dir / "exit").is_symlink()
        assert processes.read_int(run_dir / "exit") == 5
        (run_dir / "exit").unlink()
    assert target.read_text() == "keep\n" and not (tmp_path / "nowhere").exists()
