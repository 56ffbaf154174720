"""What the agentic service does inside a task's workspace, in worker threads: set-up,
the question file (`BLOCKED.md`) and the answer (`ANSWER.md`), and what a run left.

Everything in a workspace was written by an agent and is untrusted: the question is read
only from a regular file reached without following a symlink, at most 64 KiB, and only
when the workspace still resolves inside the workspace root; a question already there
when a run starts (its fingerprint taken then) never counts for that run.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from . import git
from .config import SetupSpec
from .prompt import ANSWER_FILE, QUESTION_FILE

MAX_QUESTION = 64 * 1024

Fingerprint = tuple[int, int, int] | None  # (inode, size, mtime_ns) of the question file


class SetupFailed(Exception):
    """The workspace's set-up failed; the message says how."""


def inside(root: Path, path: Path) -> bool:
    try:
        return path.resolve().is_relative_to(root.resolve())
    except OSError:
        return False


def fingerprint(path: Path) -> Fingerprint:
    try:
        st = os.lstat(path / QUESTION_FILE)
    except OSError:
        return None
    return (st.st_ino, st.st_size, st.st_mtime_ns)


def take_question(root: Path, path: Path, before: Fingerprint) -> str | None:
    """The question this run wrote in BLOCKED.md (cut at 64 KiB), removed from the
    workspace so it is never committed; None when there is none, it is empty, or it is
    the one that was there before the run."""
    if not inside(root, path):
        return None
    target = path / QUESTION_FILE
    now = fingerprint(path)
    if now is None or now == before:
        return None
    try:
        fd = os.open(target, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return None
        data = os.read(fd, MAX_QUESTION + 1)
    except OSError:
        return None
    finally:
        os.close(fd)
    text = data[:MAX_QUESTION].decode(errors="replace").strip()
    if len(data) > MAX_QUESTION:
        text += "\n[question cut at 64 KiB]"
    with contextlib.suppress(OSError):
        target.unlink()
    return text or None


def write_answer(root: Path, path: Path, answer: str) -> None:
    """ANSWER.md at the top of the workspace (never through a symlink)."""
    if not inside(root, path):
        raise SetupFailed(f"workspace {path} no longer lies inside the workspace root")
    flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        fd = os.open(path / ANSWER_FILE, flags, 0o644)
    except OSError as e:
        raise SetupFailed(f"cannot write {ANSWER_FILE} in {path}: {e.strerror}") from None
    with open(fd, "w", encoding="utf-8") as f:
        f.write(answer.rstrip() + "\n")


def drop_answer(path: Path) -> None:
    target = path / ANSWER_FILE
    try:
        if stat.S_ISREG(os.lstat(target).st_mode):
            target.unlink()
    except OSError:
        pass


def set_up(source: Path | None, path: Path, spec: SetupSpec) -> None:
    """Copy the configured files in from the source repository (local ones only), then run
    the set-up command with its timeout; SetupFailed says what went wrong."""
    if source is not None:
        for name in spec.copy_files:
            origin = (source / name).resolve()
            if not origin.is_relative_to(source.resolve()) or not origin.is_file():
                continue
            target = path / name
            if not target.resolve().is_relative_to(path.resolve()):
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(origin, target)
    if spec.command:
        try:
            done = subprocess.run(
                spec.command,
                cwd=path,
                capture_output=True,
                timeout=spec.timeout_s,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise SetupFailed(
                f"the set-up command {spec.command[0]!r} took longer than {spec.timeout_s:g}s"
            ) from None
        except OSError as e:
            raise SetupFailed(f"cannot run the set-up command {spec.command[0]!r}: {e}") from None
        if done.returncode != 0:
            last = (done.stderr or done.stdout).decode(errors="replace").strip().splitlines()
            tail = f": {last[-1][:200]}" if last else ""
            raise SetupFailed(
                f"the set-up command {spec.command[0]!r} exited {done.returncode}{tail}"
            )


@dataclass(frozen=True)
class Leftovers:
    """What a run left in its workspace."""

    uncommitted: list[str] = field(default_factory=list)  # left uncommitted (and still so)
    committed: list[str] = field(default_factory=list)  # left uncommitted, committed by us
    commit: str | None = None
    commits: list[git.Commit] = field(default_factory=list)  # on the branch, not in base
    files: list[git.FileChange] = field(default_factory=list)


def after_run(root: Path, path: Path, base: str, run_id: str, *, commit: bool) -> Leftovers:
    """Look at the workspace after a run: what is uncommitted (committed to the task branch
    when `commit`), and the branch's commits and files against base."""
    if not inside(root, path) or not path.is_dir():
        return Leftovers()
    drop_answer(path)
    state = git.work_state(path)
    left, sha, committed = state.uncommitted, None, []
    if left and commit:
        sha = git.commit_all(path, f"fleetbus: changes left uncommitted by run {run_id}")
        if sha is not None:
            committed, left = left, []
    ahead = git.ahead(path, base)
    return Leftovers(left, committed, sha, ahead.commits, ahead.files)
