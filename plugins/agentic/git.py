"""The agentic service's git layer: every git operation it needs, synchronous.

The caller runs these in worker threads. git always runs from an argv list (never a
shell) with prompts off and the C locale; a caller's value that would reach git as an
argument and starts with '-' is refused before git runs. Every failure is a `GitError`
whose message is one line: what is wrong and, where it can tell, what to do.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import stat
import subprocess
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal
from urllib.parse import urlsplit

__all__ = [
    "AUTHOR_ENV",
    "Ahead",
    "Commit",
    "Diff",
    "FileChange",
    "GitError",
    "Merged",
    "Prepared",
    "RepoSource",
    "WorkState",
    "ahead",
    "branch_exists",
    "commit_all",
    "current_branch",
    "diff",
    "dir_size",
    "discard_workspace",
    "is_merged",
    "merge",
    "prepare_workspace",
    "remote_head",
    "remove_clone",
    "remove_worktree",
    "rev_parse",
    "salvage",
    "source_of",
    "validate_branch",
    "work_state",
]

TIMEOUT = 300.0  # seconds for one local git command
CLONE_TIMEOUT = 1800.0
DETAIL_MAX = 300  # characters of git's stderr quoted in a message
DIRTY_NAMED = 10  # dirty files named when a merge is refused

AUTHOR_ENV: dict[str, str] = {
    "GIT_AUTHOR_NAME": "fleetbus",
    "GIT_AUTHOR_EMAIL": "fleetbus@localhost",
    "GIT_COMMITTER_NAME": "fleetbus",
    "GIT_COMMITTER_EMAIL": "fleetbus@localhost",
}
# Variables that would point git at another repository than the one named with -C.
_REPO_VARS = (
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_COMMON_DIR",
    "GIT_OBJECT_DIRECTORY",
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_NAMESPACE",
    "GIT_PREFIX",
)
_NO_SIGN = ["-c", "commit.gpgsign=false"]
_SCP = re.compile(
    r"^(?P<user>[^@/:\s]+)@(?P<host>[A-Za-z0-9][A-Za-z0-9.-]*|\[[0-9A-Fa-f:.]+\]):(?P<path>.+)$"
)
_SCHEMES = ("https", "ssh", "file")
_ALLOWED = "use https://, ssh://, file:// or user@host:path, or the path of a local clone"


class GitError(Exception):
    """A git operation failed; str() is one line saying what is wrong and what to do."""

    def __init__(self, message: str) -> None:
        super().__init__(_one_line(message))


# -- running git --------------------------------------------------------------------------
def _one_line(text: str) -> str:
    text = text.encode("utf-8", "backslashreplace").decode("utf-8")
    return " ".join(text.split())


def _detail(stderr: str, code: int | None = None) -> str:
    """The first relevant line of git's stderr (and a list it introduces), cut short."""
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    lines = [ln for ln in lines if not ln.lstrip().startswith("hint:")]
    if not lines:
        return "git gave no reason" if code is None else f"git exited with {code}, giving no reason"
    i = next(
        (k for k, ln in enumerate(lines) if ln.startswith(("fatal:", "error:"))),
        0,
    )
    line = lines[i].strip()
    for prefix in ("fatal:", "error:"):
        line = line.removeprefix(prefix).strip()
    if line.endswith(":"):  # e.g. "...would be overwritten by merge:" and a file list
        listed = []
        for ln in lines[i + 1 :]:
            if not ln.startswith(("\t", " ")):
                break
            listed.append(ln.strip())
        line = f"{line} {', '.join(listed)}" if listed else line.rstrip(":")
    line = _one_line(line)
    return line if len(line) <= DETAIL_MAX else line[: DETAIL_MAX - 3] + "..."


def _env(extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _REPO_VARS}
    env["GIT_TERMINAL_PROMPT"] = "0"
    env["LC_ALL"] = "C"
    # a read (`status` while `agentic.status` looks) never takes index.lock, so it cannot
    # make a commit running at the same moment fail
    env["GIT_OPTIONAL_LOCKS"] = "0"
    if extra:
        env.update(extra)
    return env


def _git(
    args: list[str],
    what: str,
    *,
    ok: tuple[int, ...] = (0,),
    timeout: float = TIMEOUT,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run `git args`; a return code outside `ok` is GitError("<what>: <git's reason>")."""
    try:
        proc = subprocess.run(
            ["git", *args],
            capture_output=True,
            text=True,
            encoding="utf-8",
            errors="surrogateescape",
            timeout=timeout,
            env=_env(env),
            stdin=subprocess.DEVNULL,
        )
    except FileNotFoundError:
        raise GitError("git is not installed or not on PATH: install git") from None
    except subprocess.TimeoutExpired:
        raise GitError(f"{what}: git took longer than {timeout:g}s and was stopped") from None
    if proc.returncode not in ok:
        raise GitError(f"{what}: {_detail(proc.stderr, proc.returncode)}")
    return proc


def _opt_safe(value: str, what: str) -> str:
    """Refuse a caller's value git could read as an option (or cannot take at all)."""
    if not value:
        raise GitError(f"{what} is empty: give a name")
    if value.startswith("-"):
        raise GitError(f"{what} '{value}' starts with '-', which git would read as an option")
    if "\x00" in value or "\n" in value:
        raise GitError(f"{what} {value!r} contains a NUL or newline character")
    return value


def _message_safe(message: str) -> str:
    if not message.strip():
        raise GitError("the commit message is empty: give one")
    if "\x00" in message:
        raise GitError("the commit message contains a NUL character")
    return message


def _commit_of(repo: Path, rev: str) -> str | None:
    proc = _git(
        ["-C", str(repo), "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
        f"cannot resolve '{rev}' in {repo}",
        ok=(0, 1),
    )
    sha = proc.stdout.strip()
    return sha if proc.returncode == 0 and sha else None


def _is_ancestor(repo: Path, older: str, newer: str) -> bool:
    proc = _git(
        ["-C", str(repo), "merge-base", "--is-ancestor", older, newer],
        f"cannot compare '{older}' and '{newer}' in {repo}",
        ok=(0, 1),
    )
    return proc.returncode == 0


# -- sources ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class RepoSource:
    """Where a task's code comes from."""

    kind: Literal["local", "remote"]
    location: str  # local: the repository's top-level directory; remote: the URL as given
    org: str  # slug of the owner: the toplevel's parent directory, or the URL's owner
    name: str  # slug of the repository, without .git


def _slug(text: str, fallback: str) -> str:
    """Letters, digits, '.', '_' and '-' (others become '-'), no leading '.'/'-', <= 100."""
    text = text.removesuffix(".git")
    slug = re.sub(r"[^A-Za-z0-9._-]", "-", text).lstrip(".-")[:100]
    return slug or fallback


def _remote(repo: str, path: str) -> RepoSource:
    parts = [p for p in path.split("/") if p]
    if not parts or not parts[-1].removesuffix(".git"):
        raise GitError(f"'{repo}' names no repository: end the URL with the repository's name")
    org = _slug(parts[-2], "remote") if len(parts) > 1 else "remote"
    return RepoSource("remote", repo, org, _slug(parts[-1], "repo"))


def source_of(repo: str) -> RepoSource:
    """The source named by `repo`: a local clone's path, or a URL git can clone.

    A local path must be inside a git work tree (its toplevel is used); a URL must use
    https://, ssh://, file:// or be scp-like user@host:path. Never contacts the network.
    """
    if not repo or not repo.strip():
        raise GitError(f"the repository is empty: {_ALLOWED}")
    if repo.startswith("-"):
        raise GitError(f"the repository '{repo}' starts with '-': {_ALLOWED}")
    if any(ord(c) < 32 or ord(c) == 127 for c in repo):
        raise GitError(f"the repository {repo!r} contains control characters: {_ALLOWED}")
    if "://" in repo:
        scheme = repo.split("://", 1)[0]
        if scheme.lower() not in _SCHEMES:
            raise GitError(f"'{repo}' uses {scheme}://, which is not allowed: {_ALLOWED}")
        parts = urlsplit(repo)
        if scheme.lower() != "file" and (not parts.hostname or parts.netloc.startswith("-")):
            raise GitError(f"'{repo}' has no valid host: {_ALLOWED}")
        return _remote(repo, parts.path)
    scp = _SCP.match(repo)
    if scp and not os.path.exists(repo):
        return _remote(repo, scp["path"])
    if "::" in repo and not os.path.exists(repo):
        transport = repo.split("::", 1)[0]
        raise GitError(
            f"'{repo}' uses the {transport}:: transport, which is not allowed: {_ALLOWED}"
        )
    path = Path(repo).expanduser()
    if not path.exists():
        raise GitError(f"'{repo}' does not exist: give the path of a clone, or a URL")
    if not path.is_dir():
        raise GitError(f"'{repo}' is not a git repository: give the path of a clone, or a URL")
    proc = _git(["-C", str(path), "rev-parse", "--show-toplevel"], "", ok=(0, 128))
    top = proc.stdout.strip()
    if proc.returncode != 0 or not top:
        raise GitError(f"'{repo}' is not a git repository: give the path of a clone, or a URL")
    toplevel = Path(top)
    return RepoSource(
        "local", str(toplevel), _slug(toplevel.parent.name, "local"), _slug(toplevel.name, "repo")
    )


# -- refs ------------------------------------------------------------------------------------
def validate_branch(name: str) -> None:
    """GitError unless `name` is a valid new branch name."""
    _opt_safe(name, "branch name")
    if "@{" in name:
        raise GitError(f"branch name '{name}' is not valid: it may not contain '@{{'")
    proc = _git(["check-ref-format", "--branch", name], "", ok=(0, 1, 128))
    if proc.returncode != 0:
        raise GitError(
            f"branch name '{name}' is not valid: use letters, digits and '/', '-', '_', '.'"
            " (no '..', spaces, '~^:?*[\\', or '.lock' ending)"
        )


def current_branch(repo: Path) -> str:
    """The branch checked out in `repo`."""
    proc = _git(
        ["-C", str(repo), "symbolic-ref", "--quiet", "--short", "HEAD"],
        f"cannot read the current branch of {repo}",
        ok=(0, 1),
    )
    if proc.returncode == 1:
        raise GitError(f"{repo} is on a detached HEAD: give base explicitly")
    return proc.stdout.strip()


def branch_exists(repo: Path, branch: str) -> bool:
    """Whether local branch `branch` exists in `repo`."""
    _opt_safe(branch, "branch")
    proc = _git(
        ["-C", str(repo), "show-ref", "--verify", "--quiet", f"refs/heads/{branch}"],
        f"cannot look up branch '{branch}' in {repo}",
        ok=(0, 1),
    )
    return proc.returncode == 0


def remote_head(url: str) -> str:
    """The default branch of the remote repository `url` (this one contacts it)."""
    _opt_safe(url, "repository URL")
    out = _git(
        ["ls-remote", "--symref", "--", url, "HEAD"],
        f"cannot read the default branch of {url}",
    ).stdout
    for line in out.splitlines():
        if line.startswith("ref: refs/heads/") and line.endswith("\tHEAD"):
            return line[len("ref: refs/heads/") : -len("\tHEAD")]
    raise GitError(f"{url} has no default branch (is it empty?): give base explicitly")


def rev_parse(repo: Path, rev: str) -> str:
    """The full sha of the commit `rev` names in `repo`."""
    _opt_safe(rev, "revision")
    sha = _commit_of(repo, rev)
    if sha is None:
        raise GitError(f"'{rev}' is not a commit in {repo}")
    return sha


# -- workspaces ---------------------------------------------------------------------------
@dataclass(frozen=True)
class Prepared:
    """A task's checkout; `created` is False when an existing one was reused."""

    path: Path
    branch: str
    base: str
    base_commit: str
    created: bool


def _reusable(source: RepoSource, path: Path, branch: str) -> bool:
    """True if `path` is a checkout of `source` on `branch`; False if it is an empty
    directory (to be filled); otherwise GitError naming what it is."""
    if not path.is_dir():
        raise GitError(f"{path} exists and is not a directory: choose another workspace")
    with os.scandir(path) as entries:
        if next(entries, None) is None:
            return False
    if not (path / ".git").exists():
        raise GitError(f"{path} is a non-empty directory, not a git checkout: remove it first")
    proc = _git(
        ["-C", str(path), "rev-parse", "--show-toplevel", "--git-common-dir"],
        f"cannot inspect {path}",
        ok=(0, 128),
    )
    out = proc.stdout.splitlines()
    if proc.returncode != 0 or len(out) < 2 or Path(out[0]).resolve() != path.resolve():
        raise GitError(f"{path} is not a usable git checkout: remove it first")
    if source.kind == "local":
        mine = _git(
            ["-C", source.location, "rev-parse", "--git-common-dir"],
            f"cannot inspect {source.location}",
        ).stdout.strip()
        same = (path / out[1]).resolve() == (Path(source.location) / mine).resolve()
    else:
        url = _git(
            ["-C", str(path), "config", "--get", "remote.origin.url"], "", ok=(0, 1)
        ).stdout.strip()
        same = url == source.location
    if not same:
        raise GitError(f"{path} is a checkout of another repository than {source.location}")
    head = _git(
        ["-C", str(path), "symbolic-ref", "--quiet", "--short", "HEAD"], "", ok=(0, 1)
    ).stdout.strip()
    if head != branch:
        on = f"branch '{head}'" if head else "a detached HEAD"
        raise GitError(f"{path} is already checked out on {on}, not '{branch}'")
    return True


def _clean_up(repo: str | None, made: Path | None, emptied: Path | None) -> None:
    """Undo a failed prepare: the directories made, the contents of a directory that was
    empty, and the worktree's registration."""
    if made is not None:
        shutil.rmtree(made, ignore_errors=True)
    if emptied is not None and emptied.is_dir():
        for entry in list(emptied.iterdir()):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                entry.unlink(missing_ok=True)
    if repo is not None:
        with contextlib.suppress(GitError):
            _git(["-C", repo, "worktree", "prune"], "")


def prepare_workspace(source: RepoSource, path: Path, branch: str, base: str) -> Prepared:
    """Check out `branch` (new from `base`, or existing) at `path`: a worktree of a local
    source, a clone of a remote one. Reuses a checkout of the same repo on `branch`; on
    failure removes whatever this call made (directories, registration, branch)."""
    _opt_safe(branch, "branch")
    _opt_safe(base, "base")
    path = Path(os.path.abspath(path))
    local = source.kind == "local"
    repo = Path(source.location)
    made: Path | None = None  # highest directory this call creates
    emptied: Path | None = None
    if os.path.lexists(path):
        if _reusable(source, path, branch):
            commit = _commit_of(repo, base) if local else _commit_of(path, f"origin/{base}")
            if commit is None:
                raise GitError(f"base '{base}' does not exist in {source.location}")
            return Prepared(path, branch, base, commit, created=False)
        emptied = path
    else:
        made = path
        while not os.path.lexists(made.parent) and made.parent != made:
            made = made.parent
    if local:
        commit = _commit_of(repo, base)
        if commit is None:
            raise GitError(f"base '{base}' does not exist in {source.location}")
        return _add_worktree(repo, path, branch, base, commit, made, emptied)
    return _clone(source, path, branch, base, made, emptied)


def _add_worktree(
    repo: Path,
    path: Path,
    branch: str,
    base: str,
    commit: str,
    made: Path | None,
    emptied: Path | None,
) -> Prepared:
    top = str(repo)
    what = f"cannot create the worktree {path} of {repo}"
    made_branch = True  # git makes the branch first, then checks out: undo it on failure
    try:
        proc = _git(
            ["-C", top, "worktree", "add", "--quiet", "-b", branch, "--", str(path), commit],
            what,
            ok=tuple(range(256)),
        )
        if proc.returncode != 0:
            if "a branch named" not in proc.stderr:
                raise GitError(f"{what}: {_detail(proc.stderr, proc.returncode)}")
            made_branch = False  # it exists already: check it out
            _git(["-C", top, "worktree", "add", "--quiet", "--", str(path), branch], what)
    except BaseException:
        _clean_up(top, made, emptied)
        if made_branch:  # only while it still points where this call made it
            with contextlib.suppress(GitError):
                _git(["-C", top, "update-ref", "-d", f"refs/heads/{branch}", commit], "")
        raise
    return Prepared(path, branch, base, commit, created=True)


def _clone(
    source: RepoSource, path: Path, branch: str, base: str, made: Path | None, emptied: Path | None
) -> Prepared:
    here = str(path)
    try:
        proc = _git(
            ["clone", "--quiet", "--branch", base, "--", source.location, here],
            f"cannot clone {source.location}",
            ok=(0, 128),
            timeout=CLONE_TIMEOUT,
        )
        if proc.returncode != 0:
            if "not found in upstream" in proc.stderr:
                raise GitError(f"base '{base}' does not exist in {source.location}")
            raise GitError(f"cannot clone {source.location}: {_detail(proc.stderr)}")
        commit = rev_parse(path, "HEAD")
        start = ["--track", f"origin/{branch}"] if _commit_of(path, f"origin/{branch}") else []
        _git(
            ["-C", here, "checkout", "--quiet", "-b", branch, *start],
            f"cannot check out branch '{branch}' in {path}",
        )
    except BaseException:
        _clean_up(None, made, emptied)
        raise
    return Prepared(path, branch, base, commit, created=True)


def discard_workspace(source: RepoSource, path: Path, branch: str) -> None:
    """Undo a workspace `prepare_workspace` just created: the checkout goes (forced: none
    of the user's work is in it) with its registration; a local `branch` is deleted only
    when no commit would be lost (another branch contains its tip) and nothing has it
    checked out."""
    _opt_safe(branch, "branch")
    path = Path(os.path.abspath(path))
    if source.kind == "remote":
        shutil.rmtree(path, ignore_errors=True)
        return
    top = source.location
    with contextlib.suppress(GitError):
        _git(["-C", top, "worktree", "remove", "--force", "--", str(path)], "")
    _clean_up(top, path, None)
    ref = f"refs/heads/{branch}"
    tip = _commit_of(Path(top), ref)
    if tip is None or _checked_out(Path(top), branch):
        return
    holders = _git(
        ["-C", top, "for-each-ref", "--format=%(refname)", "--contains", tip, "refs/heads/"],
        f"cannot look up the branches of {top}",
    ).stdout.split()
    if any(h != ref for h in holders):
        _git(["-C", top, "update-ref", "-d", ref, tip], f"cannot delete branch '{branch}'")


@dataclass(frozen=True)
class WorkState:
    """Paths with changes not committed: modified, added, deleted or untracked."""

    uncommitted: list[str]


def _status(path: Path, untracked: str = "all") -> list[str]:
    out = _git(
        ["-C", str(path), "status", "--porcelain=v1", "-z", f"--untracked-files={untracked}"],
        f"cannot read the state of {path}",
    ).stdout
    fields = out.split("\x00")
    paths: list[str] = []
    i = 0
    while i < len(fields):
        entry = fields[i]
        i += 1
        if len(entry) < 4:
            continue
        paths.append(entry[3:])
        if "R" in entry[:2] or "C" in entry[:2]:
            i += 1  # the original path of a rename or copy
    return paths


def work_state(path: Path) -> WorkState:
    """What is uncommitted in the checkout at `path`."""
    return WorkState(_status(path))


def _commit(path: Path, message: str, what: str, *, add: bool = True) -> str | None:
    """`git add -A` (unless not `add`) and commit the index as fleetbus, hooks skipped;
    None when nothing is staged."""
    here = str(path)
    if add:
        _git(["-C", here, "add", "-A"], what)
    staged = _git(["-C", here, "diff", "--cached", "--quiet"], what, ok=(0, 1))
    if staged.returncode == 0:
        return None
    _git(
        ["-C", here, *_NO_SIGN, "commit", "--quiet", "--no-verify", "-m", message],
        what,
        env=AUTHOR_ENV,
    )
    return rev_parse(path, "HEAD")


def commit_all(path: Path, message: str) -> str | None:
    """Commit everything uncommitted at `path` as fleetbus; the new sha, or None if clean."""
    _message_safe(message)
    return _commit(path, message, f"cannot commit the work in {path}")


# -- history and diffs ---------------------------------------------------------------------
@dataclass(frozen=True)
class Commit:
    sha: str
    subject: str


@dataclass(frozen=True)
class FileChange:
    path: str
    added: int | None  # None for a binary file
    removed: int | None


@dataclass(frozen=True)
class Ahead:
    commits: list[Commit]  # newest first
    files: list[FileChange]


def _range(base: str, branch: str) -> list[str]:
    return [f"{base}...{branch}", "--"]


def _numstat(path: Path, base: str, branch: str) -> list[FileChange]:
    out = _git(
        [
            "-C",
            str(path),
            "diff",
            "--no-color",
            "--no-ext-diff",
            "--numstat",
            "-z",
            *_range(base, branch),
        ],
        f"cannot compare '{branch}' with '{base}' in {path}",
    ).stdout
    fields = out.split("\x00")
    files: list[FileChange] = []
    i = 0
    while i < len(fields):
        entry = fields[i]
        i += 1
        if not entry:
            continue
        added, removed, name = entry.split("\t", 2)
        if not name:  # a rename: the old and the new path follow
            name = fields[i + 1] if i + 1 < len(fields) else ""
            i += 2
        files.append(
            FileChange(
                name,
                None if added == "-" else int(added),
                None if removed == "-" else int(removed),
            )
        )
    return files


def ahead(path: Path, base: str, branch: str = "HEAD") -> Ahead:
    """Commits on `branch` not on `base` (newest first), and the files changed on `branch`
    since it left `base`."""
    _opt_safe(base, "base")
    _opt_safe(branch, "branch")
    out = _git(
        ["-C", str(path), "log", "--format=%H%x00%s", f"{base}..{branch}", "--"],
        f"cannot list the commits of '{branch}' ahead of '{base}' in {path}",
    ).stdout
    commits = [Commit(*line.split("\x00", 1)) for line in out.splitlines() if "\x00" in line]
    return Ahead(commits, _numstat(path, base, branch))


@dataclass(frozen=True)
class Diff:
    files: list[FileChange]
    patch: str
    truncated: bool
    note: str  # e.g. why the patch is cut


def _read_capped(args: list[str], what: str, cap: int) -> tuple[bytes, bool]:
    """stdout of `git args`, at most `cap` bytes (the process is stopped past that)."""
    with tempfile.TemporaryFile() as err:
        try:
            proc = subprocess.Popen(
                ["git", *args],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=err,
                env=_env(),
            )
        except FileNotFoundError:
            raise GitError("git is not installed or not on PATH: install git") from None
        expired = threading.Event()

        def expire() -> None:
            expired.set()
            proc.kill()

        timer = threading.Timer(TIMEOUT, expire)
        timer.start()
        try:
            out = _read_upto(proc.stdout, cap + 1)
            cut = len(out) > cap
            if cut:
                proc.kill()
            code = proc.wait()
        finally:
            timer.cancel()
            if proc.stdout is not None:
                proc.stdout.close()
            if proc.poll() is None:
                proc.kill()
                proc.wait()
        if expired.is_set():
            raise GitError(f"{what}: git took longer than {TIMEOUT:g}s and was stopped")
        if not cut and code != 0:
            err.seek(0)
            raise GitError(f"{what}: {_detail(err.read().decode('utf-8', 'replace'))}")
    return out[:cap], cut


def _read_upto(stream: IO[bytes] | None, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while stream is not None and size < limit:
        chunk = os.read(stream.fileno(), min(65536, limit - size))
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def diff(
    path: Path, base: str, branch: str, *, stat_only: bool = False, cap: int = 200_000
) -> Diff:
    """What `branch` changed since it left `base`: the files, and the patch cut at `cap`
    bytes (empty with `stat_only`)."""
    _opt_safe(base, "base")
    _opt_safe(branch, "branch")
    files = _numstat(path, base, branch)
    if stat_only:
        return Diff(files, "", False, "")
    raw, cut = _read_capped(
        [
            "-C",
            str(path),
            "diff",
            "--no-color",
            "--no-ext-diff",
            "--no-textconv",
            *_range(base, branch),
        ],
        f"cannot diff '{branch}' against '{base}' in {path}",
        cap,
    )
    note = f"patch cut at {cap} bytes; it is longer (files lists every change)" if cut else ""
    return Diff(files, raw.decode("utf-8", "replace"), cut, note)


# -- merging --------------------------------------------------------------------------------
@dataclass(frozen=True)
class Merged:
    strategy: str
    commit: str  # the tip of base after the merge
    base: str


def _checked_out(repo: Path, base: str) -> list[Path]:
    """The work trees of `repo` that have branch `base` checked out."""
    out = _git(
        ["-C", str(repo), "worktree", "list", "--porcelain"], f"cannot list worktrees of {repo}"
    ).stdout
    found: list[Path] = []
    where: Path | None = None
    for line in out.splitlines():
        if line.startswith("worktree "):
            where = Path(line[len("worktree ") :])
        elif line == f"branch refs/heads/{base}" and where is not None:
            found.append(where)
    return found


def _conflicted(here: str) -> list[str]:
    out = _git(
        ["-C", here, "diff", "--name-only", "-z", "--diff-filter=U"], "", ok=(0, 1, 128)
    ).stdout
    return [p for p in out.split("\x00") if p]


def _merge_in(here: str, base: str, branch: str, tip: str, strategy: str, message: str) -> str:
    """Merge commit `tip` into the branch checked out (clean) at `here`; the new HEAD."""
    what = f"cannot merge '{branch}' into '{base}'"
    if strategy == "ff":
        _git(["-C", here, "merge", "--ff-only", "--quiet", tip], what)
        return rev_parse(Path(here), "HEAD")
    cmd = ["--no-ff", "--no-edit", "-m", message] if strategy == "merge" else ["--squash"]
    proc = _git(
        ["-C", here, *_NO_SIGN, "merge", "--quiet", "--no-verify", *cmd, tip],
        what,
        ok=(0, 1, 2, 128),
        env=AUTHOR_ENV,
    )
    if proc.returncode != 0:
        files = _conflicted(here)
        undo = ["merge", "--abort"] if strategy == "merge" else ["reset", "--merge"]
        with contextlib.suppress(GitError):
            _git(["-C", here, *undo], "")
        if files:
            named = ", ".join(files[:DIRTY_NAMED]) + (" ..." if len(files) > DIRTY_NAMED else "")
            raise GitError(
                f"merging '{branch}' into '{base}' conflicts in {named}: nothing was changed;"
                f" rebase '{branch}' on '{base}' or merge by hand"
            )
        raise GitError(f"{what}: {_detail(proc.stderr or proc.stdout)}")
    if strategy == "squash":
        try:
            if _commit(Path(here), message, what, add=False) is None:
                raise GitError(f"'{branch}' brings no changes to '{base}': nothing to merge")
        except BaseException:
            with contextlib.suppress(GitError):
                _git(["-C", here, "reset", "--merge"], "")
            raise
    return rev_parse(Path(here), "HEAD")


def merge(
    repo: Path,
    base: str,
    branch: str,
    strategy: Literal["ff", "merge", "squash"],
    message: str,
) -> Merged:
    """Merge `branch` into local branch `base` of `repo` (a toplevel) with `strategy`.

    Where `base` is checked out in `repo` the merge happens there (a dirty work tree is
    refused); where it is checked out nowhere, without touching the user's work tree (a
    ref update, or a temporary worktree). Conflicts are refused with nothing changed.
    """
    _opt_safe(base, "base")
    _opt_safe(branch, "branch")
    if strategy not in ("ff", "merge", "squash"):
        raise GitError(f"merge strategy '{strategy}' is unknown: use ff, merge or squash")
    if strategy != "ff":
        _message_safe(message)
    old = _commit_of(repo, f"refs/heads/{base}")
    if old is None:
        raise GitError(f"base branch '{base}' does not exist in {repo}")
    tip = _commit_of(repo, f"refs/heads/{branch}")
    if tip is None:
        raise GitError(f"branch '{branch}' does not exist in {repo}")
    if _is_ancestor(repo, tip, old):
        raise GitError(f"'{branch}' has no commits to merge into '{base}'")
    if strategy == "ff" and not _is_ancestor(repo, old, tip):
        raise GitError(
            f"'{base}' cannot be fast-forwarded to '{branch}': '{base}' has commits"
            f" '{branch}' lacks; use strategy merge or squash, or rebase '{branch}'"
        )
    top = Path(repo).resolve()
    where = _checked_out(repo, base)
    if where and all(w.resolve() != top for w in where):
        raise GitError(
            f"'{base}' is checked out in another worktree, {where[0]}: merge there,"
            " or switch that worktree to another branch"
        )
    if where:
        dirty = _status(top, "no")
        if dirty:
            named = ", ".join(dirty[:DIRTY_NAMED]) + (" ..." if len(dirty) > DIRTY_NAMED else "")
            raise GitError(
                f"'{base}' is checked out in {top} with uncommitted changes ({named}):"
                " commit or stash them, then merge again"
            )
        return Merged(strategy, _merge_in(str(top), base, branch, tip, strategy, message), base)
    if strategy == "ff":
        _git(
            [
                "-C",
                str(top),
                "update-ref",
                "-m",
                f"fleetbus: fast-forward to {branch}",
                *(f"refs/heads/{base}", tip, old),
            ],
            f"cannot move '{base}' to '{branch}' in {top}",
        )
        return Merged(strategy, tip, base)
    tmp = tempfile.mkdtemp(prefix="fleetbus-merge-")
    try:
        _git(
            ["-C", str(top), "worktree", "add", "--quiet", "--", tmp, base],
            f"cannot check out '{base}' to merge into it",
        )
        return Merged(strategy, _merge_in(tmp, base, branch, tip, strategy, message), base)
    finally:
        with contextlib.suppress(GitError):
            _git(["-C", str(top), "worktree", "remove", "--force", "--", tmp], "")
        shutil.rmtree(tmp, ignore_errors=True)
        with contextlib.suppress(GitError):
            _git(["-C", str(top), "worktree", "prune"], "")


def is_merged(repo: Path, branch: str, base: str) -> bool:
    """Whether the tip of `branch` is an ancestor of (or equal to) `base`."""
    _opt_safe(branch, "branch")
    _opt_safe(base, "base")
    return _is_ancestor(repo, branch, base)


# -- rescue and removal ---------------------------------------------------------------------
def salvage(path: Path, slug: str, message: str) -> str | None:
    """Commit the uncommitted work at `path` to a new branch `salvage/<slug>` (or
    `salvage/<slug>-2`, ...); the branch, or None when nothing was uncommitted."""
    _opt_safe(slug, "salvage name")
    _message_safe(message)
    validate_branch(f"salvage/{slug}")
    if not _status(path):
        return None
    here = str(path)
    out = _git(
        ["-C", here, "for-each-ref", "--format=%(refname)", "refs/heads/salvage/"],
        f"cannot list the salvage branches of {path}",
    ).stdout
    taken = {line.removeprefix("refs/heads/") for line in out.splitlines()}
    name, n = f"salvage/{slug}", 1
    while name in taken:
        n += 1
        name = f"salvage/{slug}-{n}"
    what = f"cannot save the work in {path} to '{name}'"
    _git(["-C", here, "checkout", "--quiet", "-b", name], what)
    _commit(path, message, what)
    return name


def remove_worktree(repo: Path, path: Path) -> None:
    """Remove the clean worktree `path` of `repo` (never forced), then prune; a dirty one
    is refused (salvage it first)."""
    top = str(repo)
    path = Path(os.path.abspath(path))
    if not os.path.lexists(path):
        _git(["-C", top, "worktree", "prune"], f"cannot prune the worktrees of {repo}")
        return
    proc = _git(
        ["-C", top, "worktree", "remove", "--", str(path)],
        f"cannot remove the worktree {path}",
        ok=(0, 128),
    )
    if proc.returncode != 0:
        detail = _detail(proc.stderr)
        if "is not a working tree" in detail:
            raise GitError(
                f"{path} is not a worktree of {repo}, only a directory left over:"
                " remove it by hand if nothing in it is needed"
            )
        if "modified or untracked" in detail:
            raise GitError(
                f"{path} has uncommitted changes: salvage them first; the worktree was kept"
            )
        raise GitError(f"cannot remove the worktree {path}: {detail}")
    _git(["-C", top, "worktree", "prune"], f"cannot prune the worktrees of {repo}")


def remove_clone(path: Path) -> None:
    """Delete the clone at `path` (not a worktree); refused while it has uncommitted work.
    Commits not pushed are the caller's to check (`ahead`)."""
    path = Path(os.path.abspath(path))
    if not (path / ".git").is_dir():
        raise GitError(f"{path} is not a clone (no .git directory): not removed")
    if _status(path):
        raise GitError(f"{path} has uncommitted changes: salvage them first; the clone was kept")
    try:
        shutil.rmtree(path)
    except OSError as e:
        raise GitError(f"cannot delete the clone {path}: {e.strerror or e}") from None


def dir_size(path: Path) -> int:
    """Bytes in the tree at `path` (lstat sizes, symlinks not followed, each inode once)."""
    total = 0
    seen: set[tuple[int, int]] = set()
    stack = [str(path)]
    while stack:
        try:
            with os.scandir(stack.pop()) as entries:
                for entry in entries:
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if (st.st_dev, st.st_ino) in seen:
                        continue
                    seen.add((st.st_dev, st.st_ino))
                    total += st.st_size
                    if stat.S_ISDIR(st.st_mode):
                        stack.append(entry.path)
        except OSError:
            continue
    return total


def exclude(path: Path, names: list[str]) -> None:
    """Add `/name` lines to the `info/exclude` of the repository at `path` (those missing),
    so files fleetbus writes in a workspace are never committed by `git add -A`."""
    where = _git(
        ["-C", str(path), "rev-parse", "--git-path", "info/exclude"],
        f"cannot find the exclude file of {path}",
    ).stdout.strip()
    target = Path(where) if os.path.isabs(where) else path / where
    try:
        have = target.read_text(encoding="utf-8", errors="replace").splitlines()
    except FileNotFoundError:
        have = []
    missing = [f"/{name}" for name in names if f"/{name}" not in have]
    if not missing:
        return
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "a", encoding="utf-8") as f:
        if have and not target.read_text(encoding="utf-8", errors="replace").endswith("\n"):
            f.write("\n")
        f.write("# fleetbus: files of the agentic service in task workspaces\n")
        f.write("".join(f"{line}\n" for line in missing))
