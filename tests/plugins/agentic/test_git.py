"""The agentic service's git layer, against real repositories made in tmp_path."""

from __future__ import annotations

import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fleetbus.plugins.agentic import git
from fleetbus.plugins.agentic.git import GitError


def g(cwd: Path, *args: str) -> str:
    proc = subprocess.run(
        ["git", "-C", str(cwd), *args], capture_output=True, text=True, check=True
    )
    return proc.stdout.strip()


def commit_file(cwd: Path, name: str, text: str | bytes, message: str = "") -> str:
    target = cwd / name
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(text if isinstance(text, bytes) else text.encode())
    g(cwd, "add", "--", name)
    g(cwd, "commit", "-q", "-m", message or f"edit {name}")
    return g(cwd, "rev-parse", "HEAD")


def fails(fn: Callable[..., Any], *args: Any, says: str, **kwargs: Any) -> str:
    """The call raises GitError with a one-line message containing `says`."""
    with pytest.raises(GitError) as info:
        fn(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and "Traceback" not in msg, msg
    assert says in msg, msg
    return msg


@pytest.fixture(autouse=True)
def hermetic_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No global or system git configuration leaks in (identity for clones included)."""
    cfg = tmp_path / "gitconfig"
    cfg.write_text("[user]\n\tname = Tester\n\temail = tester@example.com\n")
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(cfg))
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    r = tmp_path / "acme" / "app"
    r.mkdir(parents=True)
    g(r, "init", "-q", "-b", "main")
    g(r, "config", "user.name", "Tester")
    g(r, "config", "user.email", "tester@example.com")
    commit_file(r, "README.md", "hello\n", "initial")
    return r


@pytest.fixture
def ws(tmp_path: Path) -> Path:
    return tmp_path / "ws"


def prepare(repo: Path, path: Path, branch: str, base: str = "main") -> git.Prepared:
    return git.prepare_workspace(git.source_of(str(repo)), path, branch, base)


def branch_with(repo: Path, branch: str, files: dict[str, str], base: str = "main") -> str:
    """A branch off `base` with one commit writing `files`, made outside the repo's tree."""
    where = repo.parent / f"tmp-{branch.replace('/', '-')}"
    g(repo, "worktree", "add", "-q", "-b", branch, str(where), base)
    for name, text in files.items():
        (where / name).write_text(text)
    g(where, "add", "-A")
    g(where, "commit", "-q", "-m", f"work on {branch}")
    tip = g(where, "rev-parse", "HEAD")
    g(repo, "worktree", "remove", str(where))
    return tip


# -- sources and names ------------------------------------------------------------------------
def test_source_of_a_local_repository_and_a_subdirectory(repo: Path) -> None:
    src = git.source_of(str(repo))
    assert src == git.RepoSource("local", str(repo.resolve()), "acme", "app")
    (repo / "src" / "deep").mkdir(parents=True)
    assert git.source_of(str(repo / "src" / "deep")) == src


def test_source_of_refuses_what_is_not_a_work_tree(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    fails(git.source_of, str(plain), says="is not a git repository")
    bare = tmp_path / "bare.git"
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    fails(git.source_of, str(bare), says="is not a git repository")
    fails(git.source_of, str(tmp_path / "missing"), says="does not exist")


@pytest.mark.parametrize(
    ("url", "org", "name"),
    [
        ("https://host.invalid/acme/widget.git", "acme", "widget"),
        ("ssh://git@host.invalid:2222/acme/widget", "acme", "widget"),
        ("file:///srv/git/widget.git", "git", "widget"),
        ("git@host.invalid:acme/widget.git", "acme", "widget"),
        ("git@host.invalid:widget", "remote", "widget"),
        ("https://host.invalid/acme/we+ird%20name", "acme", "we-ird-20name"),
    ],
)
def test_source_of_a_url_does_not_contact_it(url: str, org: str, name: str) -> None:
    assert git.source_of(url) == git.RepoSource("remote", url, org, name)


@pytest.mark.parametrize(
    ("repo", "says"),
    [
        ("http://host.invalid/a/b", "uses http://, which is not allowed"),
        ("git://host.invalid/a/b", "uses git://, which is not allowed"),
        ("ext::sh -c x", "ext:: transport, which is not allowed"),
        ("-uoops", "starts with '-'"),
        ("", "is empty"),
        ("ssh://-oProxyCommand=x/a/b", "no valid host"),
    ],
)
def test_source_of_refuses_other_schemes(repo: str, says: str) -> None:
    msg = fails(git.source_of, repo, says=says)
    if "not allowed" in msg:
        assert "https://, ssh://, file://" in msg


def test_validate_branch() -> None:
    git.validate_branch("agent/fix-login")
    git.validate_branch("feature_1.2")
    fails(git.validate_branch, "-x", says="'-x' starts with '-'")
    for bad in ("a..b", "a b", "x.lock", "HEAD"):
        fails(git.validate_branch, bad, says=f"branch name '{bad}' is not valid")


def test_current_branch_rev_parse_and_branch_exists(repo: Path) -> None:
    assert git.current_branch(repo) == "main"
    sha = g(repo, "rev-parse", "HEAD")
    assert git.rev_parse(repo, "main") == sha
    assert git.branch_exists(repo, "main") and not git.branch_exists(repo, "nope")
    fails(git.rev_parse, repo, "nope", says="'nope' is not a commit")
    g(repo, "checkout", "-q", "--detach")
    fails(git.current_branch, repo, says="detached HEAD: give base explicitly")


# -- workspaces ---------------------------------------------------------------------------------
def test_prepare_creates_a_worktree_then_reuses_it(repo: Path, ws: Path) -> None:
    path = ws / "acme" / "app" / "t1"
    first = prepare(repo, path, "agent/t1")
    main = g(repo, "rev-parse", "main")
    assert first == git.Prepared(path, "agent/t1", "main", main, True)
    assert (path / "README.md").read_text() == "hello\n"
    assert git.current_branch(path) == "agent/t1"
    again = prepare(repo, path, "agent/t1")
    assert again == git.Prepared(path, "agent/t1", "main", main, False)


def test_prepare_checks_out_an_existing_branch(repo: Path, ws: Path) -> None:
    tip = branch_with(repo, "agent/old", {"old.txt": "kept\n"})
    got = prepare(repo, ws / "old", "agent/old")
    assert got.created and g(ws / "old", "rev-parse", "HEAD") == tip
    assert (ws / "old" / "old.txt").read_text() == "kept\n"


def test_prepare_with_a_missing_base_leaves_nothing(repo: Path, ws: Path) -> None:
    listed = g(repo, "worktree", "list", "--porcelain")
    fails(prepare, repo, ws / "a" / "b", "agent/x", "nope", says="base 'nope' does not exist in")
    assert not ws.exists()
    assert not git.branch_exists(repo, "agent/x")
    assert g(repo, "worktree", "list", "--porcelain") == listed


def test_prepare_failing_in_git_leaves_nothing(repo: Path, ws: Path) -> None:
    listed = g(repo, "worktree", "list", "--porcelain")
    # main is checked out in the repository itself: git refuses a second checkout
    fails(prepare, repo, ws / "a" / "b", "main", says="already checked out")
    assert not ws.exists()
    assert g(repo, "worktree", "list", "--porcelain") == listed
    # a directory that exists and is empty is filled, and emptied again on failure
    (ws / "empty").mkdir(parents=True)
    fails(prepare, repo, ws / "empty", "main", says="already checked out")
    assert list((ws / "empty").iterdir()) == []
    assert prepare(repo, ws / "empty", "agent/e").created
    # git checks out, then its post-checkout hook fails: the checkout and branch are undone
    hook = repo / ".git" / "hooks" / "post-checkout"
    hook.parent.mkdir(exist_ok=True)
    hook.write_text("#!/bin/sh\nexit 3\n")
    hook.chmod(0o755)
    listed = g(repo, "worktree", "list", "--porcelain")
    fails(prepare, repo, ws / "h" / "t", "agent/h", says="git exited with 3")
    assert not (ws / "h").exists() and not git.branch_exists(repo, "agent/h")
    assert g(repo, "worktree", "list", "--porcelain") == listed


def test_prepare_refuses_an_occupied_path(repo: Path, ws: Path) -> None:
    (ws / "busy").mkdir(parents=True)
    (ws / "busy" / "notes.txt").write_text("mine")
    fails(prepare, repo, ws / "busy", "agent/x", says=f"{ws / 'busy'} is a non-empty directory")
    assert (ws / "busy" / "notes.txt").read_text() == "mine"
    prepare(repo, ws / "t", "agent/a")
    fails(prepare, repo, ws / "t", "agent/b", says="on branch 'agent/a', not 'agent/b'")
    assert not git.branch_exists(repo, "agent/b")
    other = repo.parent / "other"
    subprocess.run(["git", "init", "-q", "-b", "agent/a", str(other)], check=True)
    commit_file(other, "x", "x")
    g(other, "worktree", "add", "-q", "-b", "agent/c", str(ws / "foreign"))
    fails(prepare, repo, ws / "foreign", "agent/c", says="another repository")


def test_prepare_clones_a_remote(repo: Path, ws: Path) -> None:
    url = f"file://{repo}"
    source = git.source_of(url)
    assert (source.kind, source.org, source.name) == ("remote", "acme", "app")
    path = ws / "clone"
    got = git.prepare_workspace(source, path, "agent/r", "main")
    assert got == git.Prepared(path, "agent/r", "main", g(repo, "rev-parse", "main"), True)
    assert git.current_branch(path) == "agent/r"
    assert g(path, "config", "remote.origin.url") == url
    assert not git.prepare_workspace(source, path, "agent/r", "main").created
    assert git.remote_head(url) == "main"
    fails(git.prepare_workspace, source, ws / "c2", "agent/r", "nope", says="base 'nope'")
    assert not (ws / "c2").exists()
    tip = branch_with(repo, "agent/there", {"t.txt": "t\n"})  # the remote has the branch
    assert git.prepare_workspace(source, ws / "c3", "agent/there", "main").created
    assert (
        g(ws / "c3", "rev-parse", "HEAD") == tip and git.current_branch(ws / "c3") == "agent/there"
    )


def test_discard_workspace_removes_what_prepare_made(repo: Path, ws: Path) -> None:
    listed = g(repo, "worktree", "list", "--porcelain")
    prepare(repo, ws / "t", "agent/t")
    git.discard_workspace(git.source_of(str(repo)), ws / "t", "agent/t")
    assert not (ws / "t").exists() and not git.branch_exists(repo, "agent/t")
    assert g(repo, "worktree", "list", "--porcelain") == listed
    branch_with(repo, "agent/own", {"own.txt": "unique\n"})
    prepare(repo, ws / "o", "agent/own")
    git.discard_workspace(git.source_of(str(repo)), ws / "o", "agent/own")
    assert not (ws / "o").exists() and git.branch_exists(repo, "agent/own")


# -- state, commits, diffs ----------------------------------------------------------------------
def test_work_state_and_commit_all(repo: Path, ws: Path) -> None:
    path = prepare(repo, ws / "t", "agent/t").path
    assert git.work_state(path).uncommitted == []
    (path / "README.md").write_text("changed\n")
    (path / "src" / "a").mkdir(parents=True)
    (path / "src" / "a" / "new.py").write_text("x = 1\n")
    assert sorted(git.work_state(path).uncommitted) == ["README.md", "src/a/new.py"]
    sha = git.commit_all(path, "-leading dash is a message, not an option")
    assert sha == g(path, "rev-parse", "HEAD")
    assert g(path, "log", "-1", "--format=%an <%ae>|%s") == (
        "fleetbus <fleetbus@localhost>|-leading dash is a message, not an option"
    )
    assert git.work_state(path).uncommitted == []
    assert git.commit_all(path, "nothing") is None
    g(path, "mv", "README.md", "RENAMED.md")
    assert git.work_state(path).uncommitted == ["RENAMED.md"]
    fails(git.commit_all, path, "  ", says="commit message is empty")


def test_ahead_lists_commits_newest_first_and_files(repo: Path, ws: Path) -> None:
    path = prepare(repo, ws / "t", "agent/t").path
    commit_file(repo, "main-only.txt", "not on the branch\n")
    first = commit_file(path, "a.txt", "1\n2\n3\n", "add a")
    second = commit_file(path, "README.md", "hello\nworld\n", "extend readme")
    commit_file(path, "blob.bin", b"\x00\x01\x02" * 100, "binary")
    got = git.ahead(path, "main")
    assert [c.subject for c in got.commits] == ["binary", "extend readme", "add a"]
    assert got.commits[1].sha == second and got.commits[2].sha == first
    assert sorted(got.files, key=lambda f: f.path) == [
        git.FileChange("README.md", 1, 0),
        git.FileChange("a.txt", 3, 0),
        git.FileChange("blob.bin", None, None),
    ]
    assert git.ahead(repo, "main", "main") == git.Ahead([], [])
    fails(git.ahead, path, "nope", says="cannot list the commits of 'HEAD' ahead of 'nope'")


def test_diff_stat_only_and_cap(repo: Path, ws: Path) -> None:
    path = prepare(repo, ws / "t", "agent/t").path
    commit_file(path, "big.txt", "".join(f"line {i}\n" for i in range(5000)))
    g(path, "mv", "README.md", "docs.md")
    g(path, "commit", "-q", "-m", "rename")
    stat = git.diff(path, "main", "agent/t", stat_only=True)
    files = [git.FileChange("big.txt", 5000, 0), git.FileChange("docs.md", 0, 0)]
    assert stat == git.Diff(files, "", False, "")
    full = git.diff(path, "main", "agent/t")
    assert not full.truncated and "+line 4999\n" in full.patch and full.note == ""
    cut = git.diff(path, "main", "agent/t", cap=1000)
    assert cut.truncated and len(cut.patch.encode()) <= 1000
    assert full.patch.startswith(cut.patch)
    assert "cut at 1000 bytes" in cut.note and "\n" not in cut.note


# -- merging ----------------------------------------------------------------------------------
def head(repo: Path) -> str:
    return g(repo, "rev-parse", "HEAD")


def test_merge_ff_into_the_checked_out_base(repo: Path) -> None:
    tip = branch_with(repo, "agent/f", {"f.txt": "f\n"})
    got = git.merge(repo, "main", "agent/f", "ff", "unused")
    assert got == git.Merged("ff", tip, "main")
    assert head(repo) == tip and (repo / "f.txt").read_text() == "f\n"
    assert git.is_merged(repo, "agent/f", "main")
    fails(git.merge, repo, "main", "agent/f", "ff", "m", says="has no commits to merge")


@pytest.mark.parametrize("strategy", ["merge", "squash"])
def test_merge_and_squash_into_the_checked_out_base(repo: Path, strategy: Any) -> None:
    tip = branch_with(repo, "agent/m", {"m.txt": "m\n"})
    commit_file(repo, "other.txt", "diverged\n")
    (repo / "untracked.txt").write_text("the user's, untouched")
    got = git.merge(repo, "main", "agent/m", strategy, "fleetbus: merge agent/m")
    assert got.commit == head(repo) and got.strategy == strategy
    parents = g(repo, "log", "-1", "--format=%P").split()
    assert len(parents) == (2 if strategy == "merge" else 1)
    assert (tip in parents) == (strategy == "merge")
    assert g(repo, "log", "-1", "--format=%an|%s") == "fleetbus|fleetbus: merge agent/m"
    assert (repo / "m.txt").read_text() == "m\n"
    assert g(repo, "status", "--porcelain") == "?? untracked.txt"
    assert git.is_merged(repo, "agent/m", "main") == (strategy == "merge")


def test_ff_refused_when_not_a_fast_forward(repo: Path) -> None:
    branch_with(repo, "agent/f", {"f.txt": "f\n"})
    before = commit_file(repo, "other.txt", "diverged\n")
    fails(git.merge, repo, "main", "agent/f", "ff", "m", says="cannot be fast-forwarded")
    assert head(repo) == before


@pytest.mark.parametrize("strategy", ["ff", "merge", "squash"])
def test_merge_into_a_base_not_checked_out(
    repo: Path, strategy: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    tip = branch_with(repo, "agent/m", {"m.txt": "m\n"})
    if strategy != "ff":
        commit_file(repo, "other.txt", "diverged\n")
    g(repo, "checkout", "-q", "-b", "dev")
    (repo / "README.md").write_text("the user's edit\n")
    listed = g(repo, "worktree", "list", "--porcelain")
    got = git.merge(repo, "main", "agent/m", strategy, "fleetbus: merge")
    assert got.commit == g(repo, "rev-parse", "main")
    assert (got.commit == tip) == (strategy == "ff")
    assert g(repo, "show", "main:m.txt") == "m"
    # the user's working tree, branch and the list of worktrees are as they were
    assert git.current_branch(repo) == "dev"
    assert (repo / "README.md").read_text() == "the user's edit\n"
    assert not (repo / "m.txt").exists()
    assert g(repo, "worktree", "list", "--porcelain") == listed
    assert list(scratch.iterdir()) == []  # the temporary checkout is gone


def test_merge_refuses_a_dirty_base_and_changes_nothing(repo: Path) -> None:
    branch_with(repo, "agent/m", {"m.txt": "m\n"})
    before = head(repo)
    (repo / "README.md").write_text("uncommitted\n")
    fails(git.merge, repo, "main", "agent/m", "merge", "m", says="uncommitted changes (README.md)")
    assert head(repo) == before and (repo / "README.md").read_text() == "uncommitted\n"


@pytest.mark.parametrize("strategy", ["merge", "squash"])
@pytest.mark.parametrize("checked_out", [True, False])
def test_merge_refuses_a_conflict_and_changes_nothing(
    repo: Path, strategy: Any, checked_out: bool
) -> None:
    branch_with(repo, "agent/c", {"README.md": "theirs\n", "ok.txt": "fine\n"})
    commit_file(repo, "README.md", "ours\n")
    if not checked_out:
        g(repo, "checkout", "-q", "-b", "dev")
    before, main = head(repo), g(repo, "rev-parse", "main")
    listed = g(repo, "worktree", "list", "--porcelain")
    msg = fails(git.merge, repo, "main", "agent/c", strategy, "m", says="conflicts in README.md")
    assert "nothing was changed" in msg and "ok.txt" not in msg
    assert head(repo) == before and g(repo, "rev-parse", "main") == main
    assert g(repo, "status", "--porcelain") == ""
    assert not (repo / ".git" / "MERGE_HEAD").exists()
    assert g(repo, "worktree", "list", "--porcelain") == listed


def test_merge_refuses_a_base_checked_out_elsewhere(repo: Path, tmp_path: Path) -> None:
    branch_with(repo, "agent/m", {"m.txt": "m\n"})
    g(repo, "branch", "release")
    g(repo, "worktree", "add", "-q", str(tmp_path / "rel"), "release")
    fails(git.merge, repo, "release", "agent/m", "ff", "m", says=f"worktree, {tmp_path / 'rel'}")
    fails(git.merge, repo, "nope", "agent/m", "ff", "m", says="base branch 'nope' does not exist")


# -- salvage and removal ------------------------------------------------------------------------
def test_salvage_commits_to_a_new_branch_each_time(repo: Path, ws: Path) -> None:
    path = prepare(repo, ws / "t", "agent/t").path
    assert git.salvage(path, "t", "salvage") is None
    assert g(repo, "branch", "--list", "salvage/*") == ""
    (path / "wip.txt").write_text("half done\n")
    assert git.salvage(path, "t", "fleetbus: salvage") == "salvage/t"
    assert g(repo, "show", "salvage/t:wip.txt") == "half done"
    assert git.work_state(path).uncommitted == []
    (path / "more.txt").write_text("more\n")
    assert git.salvage(path, "t", "fleetbus: salvage") == "salvage/t-2"
    assert g(repo, "show", "salvage/t-2:more.txt") == "more"
    fails(git.salvage, path, "-t", "m", says="starts with '-'")


def test_remove_worktree(repo: Path, ws: Path) -> None:
    listed = g(repo, "worktree", "list", "--porcelain")
    clean = prepare(repo, ws / "clean", "agent/clean").path
    assert git.dir_size(clean) >= len("hello\n")
    git.remove_worktree(repo, clean)
    assert not clean.exists() and g(repo, "worktree", "list", "--porcelain") == listed
    dirty = prepare(repo, ws / "dirty", "agent/dirty").path
    (dirty / "wip.txt").write_text("x")
    fails(git.remove_worktree, repo, dirty, says="has uncommitted changes: salvage them first")
    assert (dirty / "wip.txt").exists()
    (ws / "plain").mkdir()
    fails(git.remove_worktree, repo, ws / "plain", says="is not a worktree of")
    assert (ws / "plain").is_dir()


def test_remove_clone(repo: Path, ws: Path) -> None:
    source = git.source_of(f"file://{repo}")
    path = git.prepare_workspace(source, ws / "c", "agent/c", "main").path
    (path / "wip.txt").write_text("x")
    fails(git.remove_clone, path, says="has uncommitted changes")
    (path / "wip.txt").unlink()
    git.remove_clone(path)
    assert not path.exists()
    wt = prepare(repo, ws / "w", "agent/w").path
    fails(git.remove_clone, wt, says="is not a clone")


def test_is_merged_and_dir_size(repo: Path) -> None:
    branch_with(repo, "agent/x", {"x.txt": "x\n"})
    assert not git.is_merged(repo, "agent/x", "main")
    assert git.is_merged(repo, "main", "agent/x")
    fails(git.is_merged, repo, "nope", "main", says="cannot compare 'nope' and 'main'")
    assert git.dir_size(repo) > (repo / "README.md").stat().st_size > 0
    assert git.dir_size(repo / "missing") == 0
