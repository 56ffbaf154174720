"""Blocked -> answer -> resume: questions taken into the run's record, followup context on
every path and in every `context` mode, and questions that are not what they seem.

Real agent processes, real SQLite; the helpers (`runner_hub`, `Watch`, ...) are the runner
tests' own. No fixed sleeps: a run that must stay active waits on a gate file (`wait .go`
for the fake agent) that the test creates.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import anyio
import pytest
from sqlite_utils import Database

from fleetbus.bus.hub import Hub
from fleetbus.plugins.runner import followup, questions
from fleetbus.plugins.runner.schema import migrations as runner_migrations
from fleetbus.plugins.runner.status import STATUS_QUESTION_BYTES
from fleetbus.testing.runner import (
    WAIT,
    Clock,
    Watch,
    dispatch,
    fake_agent,
    run_info,
    runner_hub,
    status,
)

pytestmark = pytest.mark.anyio

GATE = "wait .go"
BIG_QUESTION_SCRIPT = (
    "mkdir .fleetbus && head -c 70000 /dev/zero | tr '\\0' y > .fleetbus/question.md"
)
CONTEXTS = ("prompt", "file", "none")
AGENTS = {f"fake-{mode}": fake_agent(context=mode) for mode in CONTEXTS}


def workspace(home: Path, name: str) -> Path:
    return home / "workspaces" / name


def open_gate(home: Path, name: str) -> None:
    (workspace(home, name) / ".go").touch()


async def log_of(hub: Hub, run_id: str) -> str:
    return Path((await run_info(hub, run_id)).log or "").read_text()


def received(log: str, what: str) -> str:
    """What the fake agent printed after `fake agent received <what>:` (its `| ` lines)."""
    lines = log.splitlines()
    start = lines.index(f"fake agent received {what}:") + 1
    out = []
    for line in lines[start:]:
        if not line.startswith("| "):
            break
        out.append(line[2:])
    return "\n".join(out)


async def quick_status(hub: Hub) -> Any:
    """runner.status answers: the hub is not stuck on what an agent left."""
    with anyio.fail_after(WAIT):
        return await status(hub)


# --- the question leaves the workspace with its run ----------------------------------------


async def test_the_question_is_moved_into_the_runs_record_and_never_inherited(
    home: Path,
) -> None:
    clock = Clock()  # stands still: the next run starts in the very second the first ended
    async with runner_hub(home, clock=clock) as hub:
        watch = Watch(hub)
        # the second run waits behind the first and starts the moment it ends
        asker = await dispatch(hub, f"{GATE}; question Which DB? Postgres or SQLite", "q/w/1")
        after = await dispatch(hub, "echo AFTER", "q/w/1")
        assert (asker.status, after.status) == ("running", "queued")
        open_gate(home, "q/w/1")
        done = await watch.completed(asker.run_id)
        assert done.status == "blocked"
        assert done.question == "Which DB? Postgres or SQLite"
        assert done.reason == "question: Which DB? Postgres or SQLite"
        nxt = await watch.completed(after.run_id)
        assert (nxt.status, nxt.reason, nxt.question) == ("completed", "", None)

        first, second = await run_info(hub, asker.run_id), await run_info(hub, after.run_id)
        assert first.question == "Which DB? Postgres or SQLite"
        assert second.question is None
        assert first.ended_at is not None and second.started_at is not None
        assert second.started_at == first.ended_at
        assert not (workspace(home, "q/w/1") / ".fleetbus" / "question.md").exists()
        kept = home / "runs" / asker.run_id / "question.md"
        assert kept.read_text() == "Which DB? Postgres or SQLite\n"

        # and a run dispatched to the idle workspace right after is not blocked either
        again = await dispatch(hub, "echo AGAIN", "q/w/1")
        assert (await watch.completed(again.run_id)).status == "completed"
        assert (await status(hub)).blocked == 1


async def test_a_question_left_before_a_run_starts_is_not_that_runs(home: Path) -> None:
    async with runner_hub(home) as hub:
        watch = Watch(hub)
        stale = workspace(home, "q/w/left") / ".fleetbus" / "question.md"
        stale.parent.mkdir(parents=True)
        stale.write_text("a question nobody asked this run\n")
        run = await dispatch(hub, "echo fresh", "q/w/left")
        done = await watch.completed(run.run_id)
        assert (done.status, done.reason, done.question) == ("completed", "", None)
        assert not stale.exists()
        aside = home / "runs" / run.run_id / "leftover-question.md"
        assert aside.read_text() == "a question nobody asked this run\n"


async def test_a_question_left_by_a_failed_run_is_recorded_but_does_not_block(
    home: Path,
) -> None:
    async with runner_hub(home) as hub:
        watch = Watch(hub)
        run = await dispatch(
            hub,
            "mkdir -p .fleetbus; echo 'Why?' > .fleetbus/question.md; exit 4",
            "q/w/f",
            agent="shell",
        )
        done = await watch.completed(run.run_id)
        assert (done.status, done.reason, done.question) == ("failed", "exit 4", "Why?")
        assert not (workspace(home, "q/w/f") / ".fleetbus" / "question.md").exists()


# --- blocked -> answer -> completed, end to end --------------------------------------------


async def test_blocked_then_answered_with_a_followup_completes(home: Path) -> None:
    async with runner_hub(home) as hub:
        watch = Watch(hub)
        name = "core/app/login"
        asker = await dispatch(
            hub, "echo looked at the schema\nquestion Which database should I use?", name
        )
        done = await watch.completed(asker.run_id)
        assert done.status == "blocked"
        event = await watch.wait(
            lambda e: (
                e.topic == "channel"
                and e.message.meta.get("run_id") == asker.run_id
                and e.message.meta.get("status") == "blocked"
            )
        )
        assert event.message.content == f"fake is blocked in {name}: Which database should I use?"
        assert event.message.meta["exit_code"] == "0"
        blocked = await status(hub, status="blocked")
        assert [r.question for r in blocked.runs] == ["Which database should I use?"]

        answer = await dispatch(hub, "received\nUse SQLite.", name, session_mode="followup")
        assert (answer.status, answer.reason) == ("running", "")
        finished = await watch.completed(answer.run_id)
        assert (finished.status, finished.reason, finished.question) == ("completed", "", None)
        info = await run_info(hub, answer.run_id)
        assert info.previous_run_id == asker.run_id
        told = received(await log_of(hub, answer.run_id), "the prompt")
        assert f"This continues run {asker.run_id} in this workspace (it ended blocked" in told
        assert "Its question:\nWhich database should I use?" in told
        assert "looked at the schema" in told  # the end of its output
        assert told.index("Which database") < told.index("Answer to its question:\nreceived")
        assert told.endswith("Use SQLite.")
        end = await watch.wait(
            lambda e: (
                e.topic == "channel"
                and e.message.meta.get("run_id") == answer.run_id
                and e.message.meta.get("status") == "completed"
            )
        )
        assert end.message.content.startswith(f"fake finished {name}: completed in ")


# --- followup context: idle and busy workspaces, every mode --------------------------------


def assert_context(mode: str, log: str, previous: str) -> None:
    """What a followup of `previous` (blocked on 'Which colour?' after printing FIRST-OUTPUT)
    was told, for each context mode."""
    prompt = received(log, "the prompt")
    assert prompt.endswith("ANSWER-BLUE")
    assert f"FLEETBUS_PREVIOUS_RUN_ID={previous}" in log
    if mode == "prompt":
        context = prompt
        assert prompt.startswith(followup.OPEN)
        assert "fake agent received no context file" in log
    elif mode == "file":
        context = received(log, "the context file")
        assert prompt == "received\nenv FLEETBUS_PREVIOUS_RUN_ID\nANSWER-BLUE"
    else:
        assert prompt == "received\nenv FLEETBUS_PREVIOUS_RUN_ID\nANSWER-BLUE"
        assert "fake agent received no context file" in log
        assert "This continues" not in log and "Which colour?" not in log
        return
    assert f"This continues run {previous} in this workspace (it ended blocked, exit 0)." in context
    assert "Its question:\nWhich colour?" in context
    assert "FIRST-OUTPUT" in context


ANSWER = "received\nenv FLEETBUS_PREVIOUS_RUN_ID\nANSWER-BLUE"


@pytest.mark.parametrize("mode", CONTEXTS)
async def test_a_followup_to_an_idle_workspace_gets_the_context(home: Path, mode: str) -> None:
    async with runner_hub(home, agents=AGENTS) as hub:
        watch = Watch(hub)
        agent = f"fake-{mode}"
        first = await dispatch(
            hub, "echo FIRST-OUTPUT; question Which colour?", "c/i/1", agent=agent
        )
        assert (await watch.completed(first.run_id)).status == "blocked"
        second = await dispatch(hub, ANSWER, "c/i/1", agent=agent, session_mode="followup")
        assert (second.status, second.reason) == ("running", "")
        assert (await watch.completed(second.run_id)).status == "completed"
        assert (await run_info(hub, second.run_id)).previous_run_id == first.run_id
        assert_context(mode, await log_of(hub, second.run_id), first.run_id)
        context_file = home / "runs" / second.run_id / "context.md"
        assert context_file.exists() == (mode == "file")


@pytest.mark.parametrize("mode", CONTEXTS)
async def test_a_followup_to_a_busy_workspace_gets_the_context(home: Path, mode: str) -> None:
    async with runner_hub(home, agents=AGENTS) as hub:
        watch = Watch(hub)
        agent = f"fake-{mode}"
        first = await dispatch(
            hub, f"echo FIRST-OUTPUT; {GATE}; question Which colour?", "c/b/1", agent=agent
        )
        second = await dispatch(hub, ANSWER, "c/b/1", agent=agent, session_mode="followup")
        assert (first.status, second.status, second.reason) == ("running", "queued", "session busy")
        open_gate(home, "c/b/1")
        assert (await watch.completed(first.run_id)).status == "blocked"
        assert (await watch.completed(second.run_id)).status == "completed"
        assert (await run_info(hub, second.run_id)).previous_run_id == first.run_id
        assert_context(mode, await log_of(hub, second.run_id), first.run_id)


async def test_a_followup_merged_by_debounce_gets_the_context(home: Path) -> None:
    clock = Clock()
    async with runner_hub(home, clock=clock, session={"debounce_ms": 800}) as hub:
        watch = Watch(hub)
        first = await dispatch(hub, f"echo FIRST-OUTPUT; {GATE}; question Which colour?", "c/m/1")
        waiting = await dispatch(hub, "echo QUEUED-PART", "c/m/1")  # a plain queued prompt
        clock.advance(0.3)
        merged = await dispatch(hub, ANSWER, "c/m/1", session_mode="followup")
        assert merged.run_id == waiting.run_id and "merged" in merged.reason
        open_gate(home, "c/m/1")
        assert (await watch.completed(first.run_id)).status == "blocked"
        clock.advance(1)  # past the quiet period
        await hub.bus.perform("runner.poke")
        assert (await watch.completed(waiting.run_id)).status == "completed"
        assert (await run_info(hub, waiting.run_id)).previous_run_id == first.run_id
        log = await log_of(hub, waiting.run_id)
        assert "QUEUED-PART" in log
        assert_context("prompt", log, first.run_id)


async def test_a_followup_continues_the_run_that_really_came_before_it(home: Path) -> None:
    """Dispatched while A runs, with B queued ahead: it continues B, not A."""
    async with runner_hub(home) as hub:
        watch = Watch(hub)
        a = await dispatch(hub, f"echo OUT-A; {GATE}", "c/o/1")
        b = await dispatch(hub, "echo OUT-B", "c/o/1")
        c = await dispatch(hub, "received", "c/o/1", session_mode="followup")
        assert (a.status, b.status, c.status) == ("running", "queued", "queued")
        assert "without context" not in c.reason
        open_gate(home, "c/o/1")
        for run in (a, b, c):
            assert (await watch.completed(run.run_id)).status == "completed"
        assert (await run_info(hub, c.run_id)).previous_run_id == b.run_id
        told = received(await log_of(hub, c.run_id), "the prompt")
        assert (
            f"This continues run {b.run_id} in this workspace (it ended completed, exit 0)" in told
        )
        assert "OUT-B" in told and "OUT-A" not in told
        assert "Follow-up:\nreceived" in told  # B asked nothing: no answer heading


# --- a followup with nothing before it -----------------------------------------------------


async def test_a_followup_to_a_workspace_that_never_ran_starts_without_context(
    home: Path,
) -> None:
    async with runner_hub(home) as hub:
        watch = Watch(hub)
        run = await dispatch(
            hub, "received; env FLEETBUS_PREVIOUS_RUN_ID", "n/w/1", session_mode="followup"
        )
        assert (run.status, run.reason) == ("running", followup.NO_EARLIER_RUN)
        assert (await watch.completed(run.run_id)).status == "completed"
        log = await log_of(hub, run.run_id)
        assert "FLEETBUS_PREVIOUS_RUN_ID unset" in log
        assert received(log, "the prompt") == "received; env FLEETBUS_PREVIOUS_RUN_ID"
        assert (await run_info(hub, run.run_id)).previous_run_id is None

        # queued (frozen) with nothing ahead of it: it says it will start without context
        await hub.bus.perform("runner.stop")
        later = await dispatch(hub, "echo later", "n/w/2", session_mode="followup")
        assert later.status == "queued"
        assert later.reason == f"frozen; {followup.NO_EARLIER_RUN_YET}"
        await hub.bus.perform("runner.start")
        assert (await watch.completed(later.run_id)).status == "completed"
        assert (await run_info(hub, later.run_id)).previous_run_id is None


async def test_runs_cancelled_before_they_started_are_not_a_previous_run(home: Path) -> None:
    async with runner_hub(home) as hub:
        await hub.bus.perform("runner.stop")
        dropped = await dispatch(hub, "echo never", "n/w/c")
        await hub.bus.perform("runner.kill", {"run_id": dropped.run_id})
        await hub.bus.perform("runner.start")
        watch = Watch(hub)
        run = await dispatch(hub, "echo go", "n/w/c", session_mode="followup")
        assert (run.status, run.reason) == ("running", followup.NO_EARLIER_RUN)
        await watch.completed(run.run_id)


# --- script agents -------------------------------------------------------------------------


async def test_a_shell_followup_reads_its_context_from_a_file_and_stays_a_valid_script(
    home: Path,
) -> None:
    async with runner_hub(home) as hub:
        watch = Watch(hub)
        first = await dispatch(
            hub,
            "echo SHELL-FIRST\nmkdir -p .fleetbus\necho 'Which shell?' > .fleetbus/question.md\n",
            "sh/w/1",
            agent="shell",
        )
        assert (await watch.completed(first.run_id)).status == "blocked"
        script = 'cat "$FLEETBUS_CONTEXT_FILE"\necho "previous=$FLEETBUS_PREVIOUS_RUN_ID"\n'
        second = await dispatch(hub, script, "sh/w/1", agent="shell", session_mode="followup")
        done = await watch.completed(second.run_id)
        assert (done.status, done.exit_code) == ("completed", 0), done.reason
        log = await log_of(hub, second.run_id)
        assert (
            f"This continues run {first.run_id} in this workspace (it ended blocked, exit 0)."
            in log
        )
        assert "Its question:\nWhich shell?" in log
        assert "SHELL-FIRST" in log
        assert f"previous={first.run_id}" in log
        assert "syntax error" not in log
        assert (home / "runs" / second.run_id / "prompt.txt").read_text() == script


# --- questions that are not what they seem -------------------------------------------------


async def ends_with(hub: Hub, watch: Watch, script: str, name: str) -> Any:
    run = await dispatch(hub, script, name, agent="shell")
    done = await watch.completed(run.run_id)
    assert (await quick_status(hub)).running == 0
    return done


async def test_a_fifo_question_is_not_read_and_the_run_still_ends(home: Path) -> None:
    async with runner_hub(home) as hub:
        watch = Watch(hub)
        done = await ends_with(
            hub, watch, "mkdir .fleetbus && mkfifo .fleetbus/question.md", "x/w/fifo"
        )
        assert done.status == "completed"
        assert (
            done.reason == "question not read: .fleetbus/question.md is a FIFO, not a regular file"
        )
        assert done.question is None
        assert not os.path.lexists(workspace(home, "x/w/fifo") / ".fleetbus" / "question.md")


async def test_a_directory_question_is_moved_aside_unread(home: Path) -> None:
    async with runner_hub(home) as hub:
        watch = Watch(hub)
        done = await ends_with(
            hub,
            watch,
            "mkdir -p .fleetbus/question.md && echo x > .fleetbus/question.md/f",
            "x/w/dir",
        )
        assert done.status == "completed"
        assert "is a directory, not a regular file" in done.reason
        fleetbus = workspace(home, "x/w/dir") / ".fleetbus"
        assert not (fleetbus / "question.md").exists()
        assert (fleetbus / f"question.md.not-a-file.{done.run_id}" / "f").read_text() == "x\n"


async def test_a_symlinked_question_is_not_followed(home: Path, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("SECRET\n")
    async with runner_hub(home) as hub:
        watch = Watch(hub)
        script = f"mkdir .fleetbus && ln -s '{secret}' .fleetbus/question.md"
        done = await ends_with(hub, watch, script, "x/w/link")
        assert done.status == "completed"
        assert (
            done.reason
            == "question not read: .fleetbus/question.md is a symlink, not a regular file"
        )
        assert done.question is None
        assert not os.path.lexists(workspace(home, "x/w/link") / ".fleetbus" / "question.md")
        assert secret.read_text() == "SECRET\n"  # the target is untouched


async def test_a_question_over_64_kib_is_cut_and_says_so(home: Path) -> None:
    async with runner_hub(home) as hub:
        watch = Watch(hub)
        done = await ends_with(hub, watch, BIG_QUESTION_SCRIPT, "x/w/big")
        assert done.status == "blocked"
        assert done.question is not None
        assert done.question.endswith(questions.CUT_NOTE)
        assert done.question.startswith("yyyy")
        assert len(done.question.encode()) <= questions.MAX_QUESTION
        info = await run_info(hub, done.run_id)
        assert info.question == done.question
        event = await watch.wait(
            lambda e: (
                e.topic == "channel"
                and e.message.meta.get("run_id") == done.run_id
                and e.message.meta.get("status") == "blocked"
            )
        )
        assert event.message.content.startswith("shell is blocked in x/w/big: yyyy")
        assert len(event.message.content) < 400


async def test_a_workspace_replaced_by_a_symlink_out_of_the_root_still_records_the_end(
    home: Path, tmp_path: Path
) -> None:
    outside = tmp_path / "outside"
    (outside / ".fleetbus").mkdir(parents=True)
    (outside / ".fleetbus" / "question.md").write_text("not yours\n")
    async with runner_hub(home) as hub:
        watch = Watch(hub)
        script = f"cd .. && mv esc esc.old && ln -s '{outside}' esc"
        done = await ends_with(hub, watch, script, "x/w/esc")
        assert done.status == "completed"
        assert done.reason.startswith(
            "question not read: the workspace is no longer a directory inside the workspace root"
        )
        assert (outside / ".fleetbus" / "question.md").read_text() == "not yours\n"
        # a .fleetbus that is a symlink is not followed either
        script = f"ln -s '{outside / '.fleetbus'}' .fleetbus"
        done = await ends_with(hub, watch, script, "x/w/dot")
        assert (
            done.reason == "question not read: .fleetbus is not a directory (a symlink or a file)"
        )
        assert (outside / ".fleetbus" / "question.md").read_text() == "not yours\n"
        # the runner goes on
        run = await dispatch(hub, "echo still here", "x/w/after")
        assert (await watch.completed(run.run_id)).status == "completed"


# --- bounds --------------------------------------------------------------------------------


async def test_a_big_question_and_a_big_prompt_still_fit_on_a_command_line(home: Path) -> None:
    async with runner_hub(home) as hub:
        watch = Watch(hub)
        script = "mkdir .fleetbus && head -c 70000 /dev/zero | tr '\\0' q > .fleetbus/question.md"
        first = await ends_with(hub, watch, script, "x/w/arg")
        assert first.status == "blocked"
        prompt = "received\n" + "a" * (100 * 1024 - 20)
        second = await dispatch(hub, prompt, "x/w/arg", session_mode="followup")
        done = await watch.completed(second.run_id)
        assert done.status == "completed", done.reason
        told = received(await log_of(hub, second.run_id), "the prompt")
        assert told.endswith(prompt.splitlines()[1])
        assert followup.CUT in told


def test_context_text_fits_its_limit_and_keeps_the_line_naming_the_run() -> None:
    previous = followup.Previous("r1", "blocked", 0, "Q" * 50_000, "T" * 4000)
    full = followup.text(previous)
    assert "Q" * 50_000 in full and "T" * 4000 in full
    for limit in (0, 300, 5000, 40_000):
        cut = followup.text(previous, limit)
        assert cut.startswith("This continues run r1 in this workspace (it ended blocked, exit 0).")
        assert len(cut.encode()) <= max(limit, 0) + 400
    assert followup.text(previous, 10**6) == full


def test_the_context_block_cannot_be_closed_by_what_the_agent_wrote() -> None:
    previous = followup.Previous("r1", "blocked", 0, f"x\n{followup.CLOSE}\nexit 3", "")
    body = followup.text(previous)
    assert followup.CLOSE not in body
    from fleetbus.testing.fake_agent import directives

    assert directives(followup.prefixed(body, "echo hi", answers=True)) == [
        "Answer to its question:",
        "echo hi",
    ]


def test_decode_cuts_on_a_character_boundary() -> None:
    data = ("é" * questions.MAX_QUESTION).encode()
    text = questions.decode(data)
    assert text.endswith(questions.CUT_NOTE)
    assert "\ufffd" not in text
    assert len(text.encode()) <= questions.MAX_QUESTION
    assert questions.decode(b"a\x00b\n") == "ab"


def test_the_migrations_give_runs_a_question_column() -> None:
    db = Database(memory=True)
    runner_migrations.apply(db)
    assert db["runs"].columns_dict["question"] is str
    assert [m.name for m in runner_migrations.pending(db)] == []


async def test_a_long_list_of_long_questions_stays_small_enough_to_send(home: Path) -> None:
    asker = {
        "command": ["sh", "-c", BIG_QUESTION_SCRIPT, "{prompt}"],
        "prompt": "arg",
        "concurrency": 8,
    }
    async with runner_hub(home, agents={"asker": asker}) as hub:
        watch = Watch(hub)
        runs = [await dispatch(hub, "ask", f"big/w/{n}", agent="asker") for n in range(18)]
        for run in runs:
            assert (await watch.completed(run.run_id)).status == "blocked"
        listed = (await status(hub, limit=100)).runs
        whole = [r for r in listed if (r.question or "").endswith(questions.CUT_NOTE)]
        short = [r for r in listed if r not in whole]
        assert whole and short
        assert sum(len((r.question or "").encode()) for r in whole) <= STATUS_QUESTION_BYTES
        assert all(len(r.question or "") < 400 and "cut" in (r.question or "") for r in short)
        alone = (await status(hub, run_id=short[0].run_id)).runs[0]
        assert (alone.question or "").endswith(questions.CUT_NOTE)
