"""The agentic service on a real embedded hub: real git repositories in temp dirs, the
fake agent committing files, leaving changes uncommitted and asking questions; retries and
allowances on an injected clock. Every wait is on a message, bounded by a timeout."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from fleetbus.bus import Context, InvalidInput, Refused
from fleetbus.bus.hub import Hub
from fleetbus.testing.gitrepo import git
from fleetbus.testing.hub import embedded_hub, isolated_env
from fleetbus.testing.runner import ORIGIN, WAIT, Clock, Watch, fake_agent, on, runner_hub

pytestmark = pytest.mark.anyio

QUICK = {"sweep_s": 0.05}


async def dispatch(hub: Hub, repo: Path | str, task: str, **kw: Any) -> Any:
    payload = {"repo": str(repo), "task": task, "agent": "fake", **kw}
    return await hub.bus.perform(
        "agentic.dispatch", payload, context=Context(caller="test", origin=ORIGIN)
    )


async def status(hub: Hub, task_id: str) -> Any:
    return (await hub.bus.perform("agentic.status", {"task_id": task_id})).tasks[0]


def ended(task_id: str, state: str | None = None) -> Any:
    def match(e: Any) -> bool:
        return (
            e.topic == "agentic.task_ended"
            and e.message.task_id == task_id
            and (state is None or e.message.status == state)
        )

    return match


async def until_ended(watch: Watch, task_id: str, timeout: float = WAIT) -> str:
    return str((await watch.wait(ended(task_id), timeout)).message.status)


def retry_number(n: int) -> Any:
    def match(e: Any) -> bool:
        return bool(e.topic == "agentic.retry_scheduled" and e.message.payload["retries"] == n)

    return match


def workspaces(home: Path) -> list[Path]:
    root = home / "workspaces"
    return sorted(p for p in root.rglob("*") if p.is_dir()) if root.exists() else []


# -- the issue's acceptance ------------------------------------------------------------------
async def test_a_task_that_commits_completes_and_merges_into_its_base(
    home: Path, source_repo: Path
) -> None:
    async with runner_hub(home, agentic=QUICK) as hub:
        watch = Watch(hub, ["agentic.*", "channel"])
        task = await dispatch(hub, source_repo, "write feature.txt hello; commit add feature")
        assert task.task_id and task.branch.startswith("agent/") and task.status == "running"
        assert await until_ended(watch, task.task_id) == "completed"
        info = await status(hub, task.task_id)
        assert info.commits_ahead == 1 and info.files_changed == ["feature.txt"], git(
            source_repo, "log", "--stat", task.branch
        )
        assert git(source_repo, "log", "-1", "--format=%s", task.branch) == "add feature"
        event = await watch.wait(
            lambda e: e.topic == "channel" and e.message.meta.get("task_id") == task.task_id
        )
        assert "1 commit(s)" in event.message.content and event.context.origin == ORIGIN
        diff = await hub.bus.perform("agentic.diff", {"task_id": task.task_id})
        assert [f.path for f in diff.files] == ["feature.txt"] and "+hello" in diff.patch
        merged = await hub.bus.perform("agentic.merge", {"task_id": task.task_id})
        assert merged.base == "main"
        assert (source_repo / "feature.txt").read_text() == "hello\n"  # main is checked out


async def test_a_question_blocks_and_an_answer_resumes_it(home: Path, source_repo: Path) -> None:
    async with runner_hub(home, agentic=QUICK) as hub:
        watch = Watch(hub, ["agentic.*", "channel"])
        task = await dispatch(
            hub, source_repo, "ask which colour?; write colour.txt chosen; commit colour"
        )
        assert await until_ended(watch, task.task_id) == "blocked"
        info = await status(hub, task.task_id)
        assert info.question == "which colour?" and info.status == "blocked"
        path = Path(info.path)
        assert not (path / "BLOCKED.md").exists()  # taken into the record, never committed
        event = await watch.wait(
            lambda e: e.topic == "channel" and e.message.meta.get("status") == "blocked"
        )
        assert "agentic_resume" in event.message.content
        resumed = await hub.bus.perform(
            "agentic.resume", {"task_id": task.task_id, "answer": "blue"},
            context=Context(caller="test", origin=ORIGIN),
        )  # fmt: skip
        assert resumed.run_id != info.runs[0].run_id
        watch.seen.clear()
        assert await until_ended(watch, task.task_id) == "completed"
        info = await status(hub, task.task_id)
        assert "read the answer: blue" in info.log_tail
        assert len(info.runs) == 2 and info.answer == "blue"
        files = git(source_repo, "show", "--name-only", "--format=", task.branch).split()
        assert files == ["colour.txt"]  # ANSWER.md and BLOCKED.md stay out of the branch


async def test_a_task_open_when_the_hub_starts_still_hears_of_its_runs(
    home: Path, source_repo: Path
) -> None:
    # the service hears only runs in the workspaces of tasks not ended: those found in the
    # store at startup count as well as those made since (no sweep here to make up for it)
    slow = {"sweep_s": 3600}
    async with runner_hub(home, agentic=slow) as hub:
        watch = Watch(hub, ["agentic.*"])
        task = await dispatch(hub, source_repo, "ask which colour?; write colour.txt x; commit c")
        assert await until_ended(watch, task.task_id) == "blocked"
    async with runner_hub(home, agentic=slow) as hub:
        watch = Watch(hub, ["agentic.*"])
        await hub.bus.perform(
            "agentic.resume", {"task_id": task.task_id, "answer": "blue"},
            context=Context(caller="test", origin=ORIGIN),
        )  # fmt: skip
        assert await until_ended(watch, task.task_id) == "completed"


async def test_a_failing_task_is_retried_then_dead_lettered(home: Path, source_repo: Path) -> None:
    clock = Clock()
    async with runner_hub(home, clock=clock, agentic=QUICK) as hub:
        watch = Watch(hub, ["agentic.*", "runner.run_completed"])
        task = await dispatch(hub, source_repo, "exit 1", max_retries=2)
        delays = []
        for attempt in (1, 2):
            retry = await watch.wait(retry_number(attempt))
            due = retry.message.payload["next_attempt"]
            delays.append(due - clock())
            assert (await status(hub, task.task_id)).status == "pending"
            clock.advance(due - clock())
        assert delays == [5, 10]  # 5 s * 2^(n-1)
        dead = await watch.wait(
            lambda e: e.topic == "agentic.task_dead_lettered" and e.message.task_id == task.task_id
        )
        assert "after 2 retries" in dead.message.reason
        info = await status(hub, task.task_id)
        assert info.status == "failed" and len(info.runs) == 3


async def test_uncommitted_work_is_committed_or_salvaged_never_lost(
    home: Path, source_repo: Path
) -> None:
    async with runner_hub(home, agentic={**QUICK, "commit_leftovers": False}) as hub:
        watch = Watch(hub, ["agentic.*"])
        task = await dispatch(hub, source_repo, "write notes.txt keep me")
        assert await until_ended(watch, task.task_id) == "completed"
        info = await status(hub, task.task_id)
        assert info.uncommitted == ["notes.txt"]
        path = Path(info.path)
        cleaned = await hub.bus.perform("agentic.cleanup", {"task_id": task.task_id})
        (one,) = cleaned.cleaned
        assert one.removed and one.salvaged is not None and cleaned.bytes_freed > 0
        assert not path.exists()
        assert git(source_repo, "show", f"{one.salvaged}:notes.txt") == "keep me"
        assert git(source_repo, "branch", "--list", task.branch)  # the task branch stays
    async with runner_hub(home, agentic=QUICK) as hub:  # default: committed to the branch
        watch = Watch(hub, ["agentic.*"])
        task = await dispatch(hub, source_repo, "write more.txt also kept")
        assert await until_ended(watch, task.task_id) == "completed"
        info = await status(hub, task.task_id)
        assert info.uncommitted == [] and info.files_changed == ["more.txt"]
        subject = git(source_repo, "log", "-1", "--format=%s", task.branch)
        assert info.runs[0].run_id in subject


async def test_a_bad_repo_is_refused_and_nothing_is_created(home: Path, tmp_path: Path) -> None:
    plain = tmp_path / "not-a-repo"
    plain.mkdir()
    async with runner_hub(home, agentic=QUICK) as hub:
        for repo in (str(plain), str(tmp_path / "missing"), "http://example.com/x.git", "-x"):
            with pytest.raises(InvalidInput) as e:
                await dispatch(hub, repo, "do it")
            assert "repo" in str(e.value) and "\n" not in e.value.message, e.value.message
        listed = await hub.bus.perform("agentic.status", {})
        assert listed.tasks == [] and workspaces(home) == []


# -- routing, idempotency, cancel, merge refusals ----------------------------------------------
async def test_labels_route_to_a_capable_agent_or_are_refused_naming_capabilities(
    home: Path, source_repo: Path
) -> None:
    agents = {
        "pyfake": fake_agent(capabilities=["python"]),
        "gofake": fake_agent(capabilities=["go"]),
    }
    routable = {"agents": {name: {"route": name in agents} for name in
                           ["pyfake", "gofake", "fake", "shell", "codex", "claude", "gemini"]}}  # fmt: skip
    async with runner_hub(home, agents=agents, agentic={**QUICK, **routable}) as hub:
        task = await dispatch(hub, source_repo, "echo hi", agent=None, labels=["go"])
        assert task.agent == "gofake"
        with pytest.raises(InvalidInput) as e:
            await dispatch(hub, source_repo, "echo hi", agent=None, labels=["rust"])
        assert "known capabilities: go, python" in e.value.message
        with pytest.raises(InvalidInput) as e:
            await dispatch(hub, source_repo, "echo hi", agent="pyfake", labels=["go"])
        assert "lacks the capabilities ['go']" in e.value.message


async def test_the_same_idempotency_key_returns_the_same_task(
    home: Path, source_repo: Path
) -> None:
    async with runner_hub(home, agentic=QUICK) as hub:
        first = await dispatch(hub, source_repo, "echo one", idempotency_key="k1")
        again = await dispatch(hub, source_repo, "echo one", idempotency_key="k1")
        assert again.task_id == first.task_id
        listed = await hub.bus.perform("agentic.status", {})
        assert len(listed.tasks) == 1


async def test_cancel_kills_the_run_and_keeps_the_workspace(home: Path, source_repo: Path) -> None:
    async with runner_hub(home, agentic=QUICK) as hub:
        watch = Watch(hub, ["agentic.*", "runner.*"])
        task = await dispatch(hub, source_repo, "wait never.flag")
        await watch.started(task.run_id)
        state = await hub.bus.perform("agentic.cancel", {"task_id": task.task_id})
        assert state.status == "cancelled"
        end = await watch.completed(task.run_id)
        assert end.status == "cancelled"  # killed by the cancel, not ended on its own
        info = await status(hub, task.task_id)
        assert info.status == "cancelled" and Path(info.path).is_dir()
        with pytest.raises(Refused):
            await hub.bus.perform("agentic.cancel", {"task_id": task.task_id})
        with pytest.raises(Refused) as e:
            await hub.bus.perform("agentic.resume", {"task_id": task.task_id, "answer": "x"})
        assert "not blocked" in e.value.message


async def test_a_conflicting_or_dirty_merge_is_refused_and_changes_nothing(
    home: Path, source_repo: Path
) -> None:
    async with runner_hub(home, agentic=QUICK) as hub:
        watch = Watch(hub, ["agentic.*"])
        task = await dispatch(hub, source_repo, "write README.md theirs; commit readme")
        assert await until_ended(watch, task.task_id) == "completed"
        (source_repo / "README.md").write_text("dirty\n")
        with pytest.raises(Refused) as e:
            await hub.bus.perform("agentic.merge", {"task_id": task.task_id})
        assert "README.md" in e.value.message
        git(source_repo, "checkout", "--", "README.md")
        (source_repo / "README.md").write_text("ours\n")
        git(source_repo, "commit", "-qam", "ours")
        head = git(source_repo, "rev-parse", "HEAD")
        with pytest.raises(Refused) as e:
            await hub.bus.perform("agentic.merge", {"task_id": task.task_id})
        assert "README.md" in e.value.message
        assert git(source_repo, "rev-parse", "HEAD") == head
        assert git(source_repo, "status", "--porcelain") == ""


async def test_a_merge_of_a_task_with_no_commits_is_refused(home: Path, source_repo: Path) -> None:
    async with runner_hub(home, agentic=QUICK) as hub:
        watch = Watch(hub, ["agentic.*"])
        task = await dispatch(hub, source_repo, "echo nothing to do")
        assert await until_ended(watch, task.task_id) == "completed"
        with pytest.raises(Refused) as e:
            await hub.bus.perform("agentic.merge", {"task_id": task.task_id})
        assert "no commits" in e.value.message


# -- allowances and usage ----------------------------------------------------------------------
async def test_a_daily_job_limit_holds_the_task_until_midnight_utc(
    home: Path, source_repo: Path
) -> None:
    clock = Clock()
    spec = {**QUICK, "agents": {"fake": {"allowance": {"daily_job_limit": 1}}}}
    async with runner_hub(home, clock=clock, agentic=spec) as hub:
        watch = Watch(hub, ["agentic.*"])
        first = await dispatch(hub, source_repo, "usage 100 50 0.25")
        assert await until_ended(watch, first.task_id) == "completed"
        recorded = await watch.wait(lambda e: e.topic == "agentic.usage_recorded")
        assert recorded.message.payload == {"tokens": 150, "cost_usd": 0.25}
        exceeded = await watch.wait(lambda e: e.topic == "agentic.quota_exceeded")
        assert "100% of its daily job limit" in exceeded.message.reason
        second = await dispatch(hub, source_repo, "echo later")
        assert second.status == "pending" and "daily job limit" in second.reason
        await watch.wait(lambda e: e.topic == "agentic.dispatch_failed_quota")
        info = await status(hub, second.task_id)
        clock.advance(info.next_attempt_at - clock())  # midnight UTC: the limit resets
        assert await until_ended(watch, second.task_id) == "completed"
        first_info = await status(hub, first.task_id)
        assert first_info.tokens == 150 and first_info.cost_usd == 0.25


# -- what agents leave and report ----------------------------------------------------------------
async def test_a_question_file_from_an_earlier_run_never_counts(
    home: Path, source_repo: Path
) -> None:
    (source_repo / "BLOCKED.md").write_text("an old question\n")
    git(source_repo, "add", "BLOCKED.md")
    git(source_repo, "commit", "-qm", "a committed BLOCKED.md")
    async with runner_hub(home, agentic=QUICK) as hub:
        watch = Watch(hub, ["agentic.*"])
        task = await dispatch(hub, source_repo, "echo working")
        assert await until_ended(watch, task.task_id) == "completed"


async def test_a_reported_question_blocks_the_task(home: Path, source_repo: Path) -> None:
    async with runner_hub(home, agentic=QUICK) as hub:
        watch = Watch(hub, ["agentic.*", "runner.*"])
        task = await dispatch(hub, source_repo, "wait go.flag")
        await watch.started(task.run_id)
        reported = await hub.bus.perform(
            "agentic.report", {"run_id": task.run_id, "kind": "question", "text": "tabs or spaces?"}
        )
        assert reported.task_id == task.task_id
        info = await status(hub, task.task_id)
        (Path(info.path) / "go.flag").write_text("")
        assert await until_ended(watch, task.task_id) == "blocked"
        assert (await status(hub, task.task_id)).question == "tabs or spaces?"
        with pytest.raises(InvalidInput) as e:
            await hub.bus.perform(
                "agentic.report", {"run_id": "r-nope", "kind": "progress", "text": "x"}
            )
        assert "run_id" in e.value.message


# -- bad input ---------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("task", "   ", "empty"),
        ("branch", "bad..name", "branch"),
        ("branch", "-delete", "option"),
        ("base", "-x", "option"),
        ("agent", "nope", "unknown agent"),
        ("model", "--exec=x", "option"),
        ("labels", ["-l"], "option"),
    ],
)
async def test_bad_input_gets_one_clear_line_and_creates_nothing(
    home: Path, source_repo: Path, field: str, value: Any, says: str
) -> None:
    async with runner_hub(home, agentic=QUICK) as hub:
        with pytest.raises(InvalidInput) as e:
            if field == "task":
                await dispatch(hub, source_repo, value)
            else:
                await dispatch(hub, source_repo, "echo hi", **{field: value})
        assert says in e.value.message and "\n" not in e.value.message, e.value.message
        assert (await hub.bus.perform("agentic.status", {})).tasks == []
        assert workspaces(home) == []
        branches = git(source_repo, "branch", "--format=%(refname:short)").split()
        assert branches == ["main"]


async def test_a_base_that_does_not_exist_is_refused_and_leaves_nothing(
    home: Path, source_repo: Path
) -> None:
    async with runner_hub(home, agentic=QUICK) as hub:
        with pytest.raises(Refused) as e:
            await dispatch(hub, source_repo, "echo hi", base="nope")
        assert "nope" in e.value.message
        assert workspaces(home) == [] or all(not any(p.iterdir()) for p in workspaces(home))
        assert git(source_repo, "worktree", "list").count("\n") == 0
        assert git(source_repo, "branch", "--format=%(refname:short)").split() == ["main"]


async def test_unknown_task_ids_are_named(home: Path) -> None:
    async with runner_hub(home, agentic=QUICK) as hub:
        for action, extra in (
            ("agentic.cancel", {}),
            ("agentic.diff", {}),
            ("agentic.merge", {}),
            ("agentic.resume", {"answer": "x"}),
            ("agentic.cleanup", {}),
        ):
            with pytest.raises(InvalidInput) as e:
                await hub.bus.perform(action, {"task_id": "t-nope", **extra})
            assert "no task 't-nope'" in e.value.message and action in e.value.message


def test_the_fake_agent_asks_once_then_reads_the_answer(tmp_path: Path) -> None:
    run = [
        sys.executable, "-m", "fleetbus.testing.fake_agent", "ask which?; echo after",
    ]  # fmt: skip
    first = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True)
    assert first.returncode == 0 and (tmp_path / "BLOCKED.md").read_text() == "which?\n"
    assert "after" not in first.stdout
    (tmp_path / "ANSWER.md").write_text("this one\n")
    second = subprocess.run(run, cwd=tmp_path, capture_output=True, text=True)
    assert "read the answer: this one" in second.stdout and "after" in second.stdout


# -- the injection corpus ------------------------------------------------------------------------
INJECTIONS = [
    ("repo", "--upload-pack=touch {pwned}"),
    ("repo", "-c core.sshCommand=touch {pwned}"),
    ("repo", "ext::sh -c touch% {pwned}"),
    ("repo", "ssh://-oProxyCommand=touch {pwned}/x"),
    ("repo", "$(touch {pwned})"),
    ("branch", "$(touch {pwned})"),
    ("branch", "x;touch {pwned}"),
    ("base", "`touch {pwned}`"),
    ("model", "--config=x;touch {pwned}"),
]


@pytest.mark.parametrize(("field", "value"), INJECTIONS)
async def test_injected_values_never_run(
    home: Path, source_repo: Path, tmp_path: Path, field: str, value: str
) -> None:
    pwned = tmp_path / "pwned"
    payload = {"repo": str(source_repo), "task": "echo hi", field: value.format(pwned=pwned)}
    async with runner_hub(home, agentic=QUICK) as hub:
        with pytest.raises((InvalidInput, Refused)) as e:
            await dispatch(hub, **payload)
        assert "\n" not in e.value.message
    assert not pwned.exists()


async def test_a_task_text_with_shell_syntax_is_only_text(
    home: Path, source_repo: Path, tmp_path: Path
) -> None:
    pwned = tmp_path / "pwned"
    async with runner_hub(home, agentic=QUICK) as hub:
        watch = Watch(hub, ["agentic.*"])
        task = await dispatch(hub, source_repo, f"echo $(touch {pwned}) `touch {pwned}`")
        assert await until_ended(watch, task.task_id) == "completed"
        info = await status(hub, task.task_id)
        assert f"$(touch {pwned})" in info.log_tail
    assert not pwned.exists()


async def test_without_the_runner_agentic_refuses_clearly(home: Path) -> None:
    env = {**isolated_env(home), "FLEETBUS_DISABLE_PLUGINS": "runner"}
    async with embedded_hub(home, env=env, serve_socket=False) as hub:
        with pytest.raises(Refused) as e:
            await hub.bus.perform("agentic.status", {})
        assert "needs the runner plugin" in e.value.message


async def test_dispatched_and_claimed_are_announced(home: Path, source_repo: Path) -> None:
    async with runner_hub(home, agentic=QUICK) as hub:
        watch = Watch(hub, ["agentic.*"])
        task = await dispatch(hub, source_repo, "echo hi")
        for topic in ("agentic.task_dispatched", "agentic.task_claimed"):
            found = await watch.wait(on(topic))
            assert found.message.task_id == task.task_id and found.context.origin == ORIGIN
        assert await until_ended(watch, task.task_id) == "completed"


async def test_a_usage_limit_makes_the_task_wait_without_counting_a_retry(
    home: Path, source_repo: Path
) -> None:
    async with runner_hub(home, agentic=QUICK) as hub:
        watch = Watch(hub, ["agentic.*"])
        task = await dispatch(hub, source_repo, "limit", max_retries=0)
        waiting = await watch.wait(
            lambda e: e.topic == "agentic.retry_scheduled" and e.message.payload.get("usage_limit")
        )
        assert "usage limit" in waiting.message.reason
        info = await status(hub, task.task_id)
        assert info.status == "pending" and info.retries == 0  # not dead-lettered
        await hub.bus.perform("agentic.cancel", {"task_id": task.task_id})


async def test_a_dry_run_builds_the_prompt_and_creates_nothing(
    home: Path, source_repo: Path
) -> None:
    async with runner_hub(home, agentic=QUICK) as hub:
        dry = await dispatch(hub, source_repo, "fix the bug", dry_run=True)
        assert dry.prompt is not None and dry.prompt.startswith("fix the bug")
        assert "Language: Python" in dry.prompt and dry.branch in dry.prompt
        assert (await hub.bus.perform("agentic.status", {})).tasks == []
        assert workspaces(home) == []


async def test_a_url_is_cloned_and_its_task_branch_kept_on_cleanup(
    home: Path, source_repo: Path
) -> None:
    async with runner_hub(home, agentic=QUICK) as hub:
        watch = Watch(hub, ["agentic.*"])
        task = await dispatch(hub, f"file://{source_repo}", "write c.txt x; commit add c")
        assert await until_ended(watch, task.task_id) == "completed"
        info = await status(hub, task.task_id)
        assert info.base == "main" and info.commits_ahead == 1
        assert (Path(info.path) / ".git").is_dir()  # a clone, not a worktree
        diff = await hub.bus.perform("agentic.diff", {"task_id": task.task_id})
        assert [f.path for f in diff.files] == ["c.txt"]
        with pytest.raises(Refused) as e:
            await hub.bus.perform("agentic.merge", {"task_id": task.task_id})
        assert "push its branch" in e.value.message
        cleaned = await hub.bus.perform("agentic.cleanup", {"task_id": task.task_id})
        assert not cleaned.cleaned[0].removed and "exist nowhere else" in cleaned.cleaned[0].reason
        assert Path(info.path).is_dir()


async def test_set_up_copies_files_in_and_a_failing_command_keeps_nothing(
    home: Path, source_repo: Path
) -> None:
    (source_repo / ".env").write_text("SECRET=1\n")  # untracked: only a copy brings it
    setup = {**QUICK, "setup": {"copy_files": [".env", "../escape"], "command": ["true"]}}
    async with runner_hub(home, agentic=setup) as hub:
        watch = Watch(hub, ["agentic.*"])
        task = await dispatch(hub, source_repo, "echo hi")
        assert await until_ended(watch, task.task_id) == "completed"
        info = await status(hub, task.task_id)
        assert (Path(info.path) / ".env").read_text() == "SECRET=1\n"
    failing = {**QUICK, "setup": {"command": ["sh", "-c", "echo broken >&2; exit 3"]}}
    async with runner_hub(home, agentic=failing) as hub:
        before = len(workspaces(home))
        with pytest.raises(Refused) as e:
            await dispatch(hub, source_repo, "echo again")
        assert "exited 3: broken" in e.value.message and "nothing was kept" in e.value.message
        assert len(workspaces(home)) == before
        assert len((await hub.bus.perform("agentic.status", {})).tasks) == 1


async def test_a_task_waits_while_every_capable_agent_is_at_its_max_load(
    home: Path, source_repo: Path
) -> None:
    agents = {"solo": fake_agent(capabilities=["rare"])}
    spec = {**QUICK, "agents": {"solo": {"max_load": 1}}}
    async with runner_hub(home, agents=agents, agentic=spec) as hub:
        watch = Watch(hub, ["agentic.*", "runner.*"])
        first = await dispatch(hub, source_repo, "wait go.flag", agent=None, labels=["rare"])
        assert first.agent == "solo" and first.status == "running"
        second = await dispatch(hub, source_repo, "echo next", agent=None, labels=["rare"])
        assert second.status == "pending" and "max load: solo (1/1)" in second.reason
        failed = await watch.wait(lambda e: e.topic == "agentic.dispatch_failed_no_agent")
        assert failed.message.task_id == second.task_id
        info = await status(hub, first.task_id)
        (Path(info.path) / "go.flag").write_text("")  # the first ends: the second goes
        assert await until_ended(watch, first.task_id) == "completed"
        assert await until_ended(watch, second.task_id) == "completed"
        assert (await status(hub, second.task_id)).agent == "solo"
