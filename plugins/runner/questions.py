"""The question an agent leaves in its workspace, taken into its run's record.

An agent that needs an answer writes `<workspace>/.fleetbus/question.md` and exits 0. When
its run ends the runner *takes* the file: reads it (bounded), removes it from the
workspace, and the run's record keeps the text (the `question` column, and a copy in
`$FLEETBUS_HOME/runs/<id>/question.md`), so no later run can inherit it.

The workspace belongs to the agent, so everything found there is untrusted input:
- the path is walked from the workspace root one directory at a time with `O_NOFOLLOW`,
  so a workspace (or `.fleetbus`) replaced by a symlink or a file is never followed;
- only a regular file is read (opened with `O_NOFOLLOW | O_NONBLOCK`, checked with
  `fstat`); a FIFO, directory, symlink, socket or device is not read, and `Taken.problem`
  says why. A directory is renamed aside (`question.md.not-a-file.<run id>`), anything
  else is unlinked (which removes the name only, never what a symlink points to);
- at most `MAX_QUESTION` bytes are read; a longer question is cut and says so;
- `take` never raises: whatever the agent did, the run's end is still recorded.

`take` does blocking I/O: call it through `anyio.to_thread`. Files only: never touches
the database, the bus or the runner's state.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger("fleetbus.runner")

DIRECTORY = ".fleetbus"
NAME = "question.md"
RELATIVE = f"{DIRECTORY}/{NAME}"
MAX_QUESTION = 64 * 1024
CUT_NOTE = "… (question cut at 64 KiB)"
SNIPPET = 300  # characters of the question quoted in a channel event

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC
_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISLNK, "a symlink"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a device"),
    (stat.S_ISBLK, "a device"),
)


@dataclass(frozen=True)
class Taken:
    """What `take` found: the question's text (None when there was none or it was not
    read) and, when something was in the way, why it was not read."""

    text: str | None = None
    problem: str = ""


def present(workspace: Path) -> bool:
    """True when something named `.fleetbus/question.md` is in `workspace` (an `lstat`:
    nothing is opened or read)."""
    return os.path.lexists(workspace / DIRECTORY / NAME)


def take(root: Path, workspace: str, run_id: str, keep: Path | None = None) -> Taken:
    """Take the question out of workspace `workspace` (a normalized name under `root`).

    A regular file is read (at most `MAX_QUESTION` bytes), its text written to `keep` when
    given, and the file removed; anything else is moved out of the way unread. Never raises.
    """
    try:
        taken = _take(root, workspace, run_id)
    except Exception as e:  # a bug or an odd file system: the run's end is recorded anyway
        log.exception("run %s: could not take the question of %s", run_id, workspace)
        return Taken(problem=f"{type(e).__name__}: {e}")
    if keep is not None and taken.text is not None:
        try:
            _write_private(keep, taken.text)
        except OSError as e:
            log.warning("run %s: could not keep its question in %s: %s", run_id, keep, e)
    return taken


def snippet(question: str, size: int = SNIPPET) -> str:
    """The question on one line, cut at `size` characters (for a channel event)."""
    line = " ".join(question.split())
    if not line:
        return "(an empty question)"
    return line if len(line) <= size else line[: size - 1].rstrip() + "…"


def first_line(question: str, size: int = SNIPPET) -> str:
    """The question's first line, cut at `size` characters (for a run's reason)."""
    lines = question.strip().splitlines()
    if not lines:
        return "(empty)"
    line = lines[0].strip()
    return line if len(line) <= size else line[: size - 1].rstrip() + "…"


# -- inside ----------------------------------------------------------------------------------
def _take(root: Path, workspace: str, run_id: str) -> Taken:
    fds: list[int] = []
    try:
        try:
            fds.append(os.open(root.resolve(), os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC))
        except FileNotFoundError:
            return Taken()
        for part in workspace.split("/"):
            try:
                fds.append(os.open(part, _DIR_FLAGS, dir_fd=fds[-1]))
            except FileNotFoundError:
                return Taken()  # the workspace is gone, and its question with it
            except OSError as e:
                if e.errno in (errno.ELOOP, errno.ENOTDIR):
                    return Taken(
                        problem="the workspace is no longer a directory inside the workspace "
                        "root (a symlink or a file took its place)"
                    )
                raise
        try:
            fds.append(os.open(DIRECTORY, _DIR_FLAGS, dir_fd=fds[-1]))
        except FileNotFoundError:
            return Taken()
        except OSError as e:
            if e.errno in (errno.ELOOP, errno.ENOTDIR):
                return Taken(problem=f"{DIRECTORY} is not a directory (a symlink or a file)")
            raise
        return _take_in(fds[-1], run_id)
    finally:
        for fd in reversed(fds):
            os.close(fd)


def _take_in(directory: int, run_id: str) -> Taken:
    """Take `question.md` from the open `.fleetbus` directory."""
    try:
        st = os.stat(NAME, dir_fd=directory, follow_symlinks=False)
    except FileNotFoundError:
        return Taken()
    if not stat.S_ISREG(st.st_mode):
        return _reject(directory, st.st_mode, run_id)
    try:
        fd = os.open(NAME, _FILE_FLAGS, dir_fd=directory)
    except FileNotFoundError:
        return Taken()
    except OSError as e:
        if e.errno == errno.ELOOP:  # swapped for a symlink since the stat
            return _reject(directory, stat.S_IFLNK, run_id)
        return Taken(problem=f"{RELATIVE} could not be opened: {e.strerror or e}")
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):  # swapped since the stat
            os.close(fd)
            fd = -1
            return _reject(directory, st.st_mode, run_id)
        data = _read(fd, MAX_QUESTION + 1)
    finally:
        if fd >= 0:
            os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(NAME, dir_fd=directory)
    return Taken(text=decode(data))


def _reject(directory: int, mode: int, run_id: str) -> Taken:
    """Move a question that is not a regular file out of the way, unread."""
    kind = next((what for test, what in _KINDS if test(mode)), "not a regular file")
    with contextlib.suppress(FileNotFoundError):
        if stat.S_ISDIR(mode):
            aside = f"{NAME}.not-a-file.{run_id}"
            os.rename(NAME, aside, src_dir_fd=directory, dst_dir_fd=directory)
        else:
            os.unlink(NAME, dir_fd=directory)
    return Taken(problem=f"{RELATIVE} is {kind}, not a regular file")


def _read(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < limit:
        chunk = os.read(fd, min(65536, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def decode(data: bytes) -> str:
    """The question's text: UTF-8 (leniently), NULs dropped; when longer than
    `MAX_QUESTION` bytes, cut on a character boundary and ended with `CUT_NOTE`, the whole
    staying within `MAX_QUESTION` bytes."""
    cut = len(data) > MAX_QUESTION
    if cut:
        end = start = MAX_QUESTION - len(f"\n{CUT_NOTE}".encode())
        while end > start - 4 and (data[end] & 0xC0) == 0x80:
            end -= 1  # do not split a UTF-8 sequence
        data = data[:end]
    text = data.decode("utf-8", errors="replace").replace("\x00", "").strip()
    return f"{text}\n{CUT_NOTE}" if cut else text


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text + "\n")
