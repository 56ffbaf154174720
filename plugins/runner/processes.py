"""Agent processes: spawned through a tiny fixed wrapper, each in its own session.

The wrapper is a constant `sh` script (never built from input; the agent's argv is passed
as arguments) that records the pid before the agent starts and the exit code after it
ends, in the run's directory, so a hub that was down when the agent finished still learns
how it ended. Spawning uses `posix_spawn` with `setsid`; exits are awaited on a pidfd.

Operating-system calls only: never touches the database, the bus or the runner's state.
"""

from __future__ import annotations

import fcntl
import os
import signal
import stat
from collections.abc import Mapping, Sequence
from pathlib import Path

import anyio

SHELL = "/bin/sh"
# $1 run dir, $2 working directory, then the agent's argv. The pid file holds the
# wrapper's pid and its /proc stat line (whose start time guards against pid reuse). A TERM/INT trap (not an
# ignore, which the agent would inherit) lets the wrapper outlive the signal that ends
# the agent, so it can still write the exit code. The exit file is opened read-write
# (`1<>`), which never blocks, after removing whatever is there: an agent that made it a
# FIFO must not hang its wrapper (and so its run) until the timeout. Only then: `rm` is a
# process of its own (`[` is built into the shell), which every run paid for before.
WRAPPER = r"""d=$1; s=; read -r s < /proc/$$/stat 2>/dev/null; echo "$$ $s" > "$d/pid"
cd -- "$2" || { echo "fleetbus: cannot enter workspace $2" >&2; echo 126 > "$d/exit"; exit 126; }
shift 2
trap ': ' TERM INT HUP
"$@"
c=$?
if [ -e "$d/exit" ] || [ -L "$d/exit" ]; then rm -f -- "$d/exit"; fi
echo $c 1<>"$d/exit"
exit $c
"""


def spawn(
    argv: Sequence[str],
    *,
    cwd: Path,
    env: Mapping[str, str],
    run_dir: Path,
    log: Path,
    stdin: Path | None,
) -> int:
    """Start `argv` in `cwd` in a new session; stdout and stderr append to `log`. Returns the pid.

    The files are opened here and only duplicated in the child: `os.posix_spawn` holds
    the interpreter lock until the child has exec'd, and opening (creating) the log in the
    child, on a slow disk, kept every other thread of the hub waiting that much longer."""
    source = _open_above_stdio(stdin if stdin else os.devnull, os.O_RDONLY)
    try:
        out = _open_above_stdio(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    except BaseException:
        os.close(source)
        raise
    try:
        actions = [
            (os.POSIX_SPAWN_DUP2, source, 0),
            (os.POSIX_SPAWN_DUP2, out, 1),
            (os.POSIX_SPAWN_DUP2, out, 2),
        ]
        args = [SHELL, "-c", WRAPPER, "fleetbus-run", str(run_dir), str(cwd), *argv]
        return os.posix_spawn(SHELL, args, dict(env), file_actions=actions, setsid=True)
    finally:
        os.close(source)
        os.close(out)


def _open_above_stdio(path: str | Path, flags: int, mode: int = 0o777) -> int:
    """Open `path` close-on-exec on a descriptor above 2, so duplicating it onto 0, 1 or 2
    in the child is never a no-op that leaves it closed on exec (a hub started with a
    standard stream closed gets those numbers first)."""
    fd = os.open(path, flags | os.O_CLOEXEC, mode)
    if fd > 2:
        return fd
    try:
        return fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 3)
    finally:
        os.close(fd)


def exit_code_of(status: int) -> int:
    """A wait status as a shell would report it: the exit code, or 128 + the signal."""
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


async def wait_child(pid: int) -> int:
    """Wait for our child `pid` to exit without blocking the loop; reap it; its exit code."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        fd = None
    if fd is not None:
        try:
            await anyio.wait_readable(fd)
        finally:
            os.close(fd)
    _, status = os.waitpid(pid, 0)
    return exit_code_of(status)


async def wait_gone(pid: int, start: float | None) -> None:
    """Wait until `pid` (not our child: adopted after a restart) has exited."""
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        return
    try:
        if start is not None and not same_process(pid, start):
            return
        await anyio.wait_readable(fd)
    finally:
        os.close(fd)


def _stat(pid: int) -> list[str] | None:
    """The fields of /proc/<pid>/stat after the command name (field 3, the state, first)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            return f.read().rsplit(b")", 1)[1].decode().split()
    except (OSError, IndexError):
        return None


def same_process(pid: int, start: float) -> bool:
    """True when `pid` is alive (not a zombie) and is the process that started at `start`."""
    fields = _stat(pid)
    if not fields or len(fields) <= 19 or fields[0] == "Z":
        return False
    return float(fields[19]) == start


def signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Send `sig` to every process of the group; False when none is left."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False
    return True


def read_pid_file(path: Path) -> tuple[int | None, float | None]:
    """(pid, start time in clock ticks or None) from a run's pid file."""
    text = read_small(path).strip()
    pid_text, _, line = text.partition(" ")
    try:
        pid = int(pid_text)
    except ValueError:
        return None, None
    try:
        fields = line.rsplit(")", 1)[1].split()
        return pid, float(fields[19])
    except (IndexError, ValueError):
        return pid, None


def read_int(path: Path) -> int | None:
    try:
        return int(read_small(path).strip())
    except ValueError:
        return None


def read_small(path: Path, size: int = 4096) -> str:
    """At most `size` bytes of a small file the wrapper wrote (`pid`, `exit`), decoded
    leniently; "" unless it is a regular file. An agent can reach its run directory:
    what it put there must neither hang nor flood the hub."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return ""
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return ""
        return os.read(fd, size).decode(errors="replace")
    except OSError:
        return ""
    finally:
        os.close(fd)


def tail(path: Path, size: int = 65536) -> str:
    """The last `size` bytes of a log, decoded leniently; "" unless it is a regular file
    (an agent can reach its run directory: a FIFO there must not hang the hub)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return ""
    with open(fd, "rb") as f:
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return ""
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - size))
            return f.read(size).decode(errors="replace")
        except OSError:
            return ""
