"""The fake coding agent, run as a real subprocess in a real git repository."""

from __future__ import annotations

import os
import re
import selectors
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from fleetbus.bus.manifests import load_manifest

AGENT = [sys.executable, "-m", "fleetbus.testing.fake_agent"]
STARTED = re.compile(r"^fake agent started pid=(\d+)$")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    subprocess.run(["git", "init", "-q", str(path)], check=True)
    return path


def run(
    cwd: Path, *args: str, stdin: str | None = None, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*AGENT, *args],
        cwd=cwd,
        input=stdin if stdin is not None else "",
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", *args], cwd=cwd, capture_output=True, text=True, check=True
    ).stdout.strip()


def test_default_run_prints_started_and_done(repo: Path) -> None:
    result = run(repo, "Please refactor the parser and add tests.")
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert STARTED.match(lines[0])
    assert lines[-1] == "fake agent done"
    assert list(repo.iterdir()) == [repo / ".git"]


def test_write_and_commit_make_a_commit(repo: Path) -> None:
    result = run(repo, "write src/app.py print('hi')\ncommit add app; echo after")
    assert result.returncode == 0, result.stderr
    assert (repo / "src" / "app.py").read_text() == "print('hi')\n"
    assert (
        git(repo, "log", "--format=%s|%an|%ae") == "add app|Fake Agent|fake-agent@fleetbus.invalid"
    )
    assert git(repo, "show", "--name-only", "--format=", "HEAD") == "src/app.py"
    assert "after" in result.stdout.splitlines()
    assert git(repo, "status", "--porcelain") == ""


def test_append_records_each_start(repo: Path) -> None:
    for _ in range(2):
        assert run(repo, "append logs/starts.log started").returncode == 0
    assert (repo / "logs" / "starts.log").read_text() == "started\nstarted\n"


@pytest.mark.parametrize("path", ["/tmp/escape.txt", "../escape.txt", "a/../../escape.txt"])
def test_write_refuses_paths_outside_the_workspace(repo: Path, path: str) -> None:
    result = run(repo, f"write {path} nope")
    assert result.returncode == 2
    assert "paths must be relative and stay inside the workspace" in result.stderr
    assert not (repo.parent / "escape.txt").exists()
    assert "fake agent done" not in result.stdout


def test_question_writes_the_file_and_exits_zero(repo: Path) -> None:
    result = run(repo, "question Which database should I use?; echo never")
    assert result.returncode == 0
    assert (repo / ".fleetbus" / "question.md").read_text() == "Which database should I use?\n"
    assert "never" not in result.stdout


@pytest.mark.parametrize("code", [0, 3, 255])
def test_exit_code_is_honoured(repo: Path, code: int) -> None:
    result = run(repo, f"echo before; exit {code}; echo after")
    assert result.returncode == code
    assert "before" in result.stdout
    assert "after" not in result.stdout


def test_output_directives(repo: Path) -> None:
    env = {**os.environ, "FAKE_TOKEN": "s3cr3t"}
    env.pop("FAKE_MISSING", None)
    result = run(
        repo,
        "echo héllo ✓ world\nstderr to stderr\nenv FAKE_TOKEN\nenv FAKE_MISSING\nsleep 0",
        env=env,
    )
    assert result.returncode == 0
    lines = result.stdout.splitlines()
    assert lines[1:] == [
        "héllo ✓ world",
        "FAKE_TOKEN=s3cr3t",
        "FAKE_MISSING unset",
        "fake agent done",
    ]
    assert result.stderr == "to stderr\n"


def test_usage_and_limit_match_the_fake_manifest(repo: Path, tmp_path: Path) -> None:
    fake = load_manifest(env={"HOME": str(tmp_path)}).agents["fake"]
    assert fake.usage is not None and fake.usage_limit_pattern is not None
    result = run(repo, "usage 120 45 0.0375")
    assert "fleetbus-usage: input_tokens=120 output_tokens=45 cost_usd=0.0375" in result.stdout
    usage = fake.usage.extract(result.stdout)
    assert (usage.input_tokens, usage.output_tokens, usage.cost_usd) == (120, 45, 0.0375)
    limited = run(repo, "limit; echo never")
    assert limited.returncode == 1
    assert "FAKE USAGE LIMIT reached, try again later" in limited.stdout
    assert re.search(fake.usage_limit_pattern, limited.stdout)
    assert "never" not in limited.stdout


def test_argv_from_the_manifest_runs(repo: Path, tmp_path: Path) -> None:
    fake = load_manifest(env={"HOME": str(tmp_path)}).agents["fake"]
    argv = fake.render("echo -n 'quoted' \"text\"", None, str(repo), None, sys.executable)
    result = subprocess.run(argv, cwd=repo, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0
    assert "-n 'quoted' \"text\"" in result.stdout.splitlines()


def test_prompt_from_stdin(repo: Path) -> None:
    result = run(repo, stdin="Fix the flaky test.\necho from stdin\nexit 4\n")
    assert result.returncode == 4
    assert "from stdin" in result.stdout


def test_prompt_from_file(repo: Path, tmp_path: Path) -> None:
    prompt = tmp_path / "prompt.md"
    prompt.write_text("# Task\nwrite notes.txt from a file\n")
    for args in (["--prompt-file", str(prompt)], [f"--prompt-file={prompt}"]):
        result = run(repo, *args)
        assert result.returncode == 0, result.stderr
        assert (repo / "notes.txt").read_text() == "from a file\n"
    missing = run(repo, "--prompt-file", str(tmp_path / "missing.md"))
    assert missing.returncode == 2
    assert "cannot read prompt file" in missing.stderr


def test_received_prints_the_prompt_and_the_context_file(repo: Path, tmp_path: Path) -> None:
    context = tmp_path / "context.md"
    context.write_text("This continues run r1.\nIts question:\nWhich one?\n")
    env = {**os.environ, "FLEETBUS_CONTEXT_FILE": str(context)}
    result = run(repo, "Use the red one.\nreceived", env=env)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines()[1:-1] == [
        "fake agent received the prompt:",
        "| Use the red one.",
        "| received",
        "fake agent received the context file:",
        "| This continues run r1.",
        "| Its question:",
        "| Which one?",
    ]
    env.pop("FLEETBUS_CONTEXT_FILE")
    bare = run(repo, "received", env=env)
    assert "fake agent received no context file" in bare.stdout


def test_a_followup_context_block_is_text_not_directives(repo: Path) -> None:
    from fleetbus.plugins.runner import followup
    from fleetbus.testing import fake_agent

    assert (fake_agent.CONTEXT_OPEN, fake_agent.CONTEXT_CLOSE) == (followup.OPEN, followup.CLOSE)
    previous = followup.Previous("r1", "blocked", 0, "exit 3; write x.txt no", "echo OLD; exit 4")
    prompt = followup.prefixed(followup.text(previous), "echo NEW", answers=True)
    result = run(repo, prompt)
    assert result.returncode == 0, result.stdout
    assert "NEW" in result.stdout.splitlines()
    assert "OLD" not in result.stdout
    assert not (repo / "x.txt").exists()


def test_wait_holds_until_the_gate_exists(repo: Path) -> None:
    proc = subprocess.Popen(
        [*AGENT, "wait gate/open; echo through"],
        cwd=repo,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
    )
    try:
        assert STARTED.match(read_line(proc, time.monotonic() + 30).strip())
        assert proc.poll() is None
        (repo / "gate").mkdir()
        (repo / "gate" / "open").touch()
        assert proc.wait(timeout=30) == 0
        assert proc.stdout is not None
        assert proc.stdout.read().decode().splitlines() == ["through", "fake agent done"]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def test_bad_directive_arguments_are_reported_not_fatal(repo: Path) -> None:
    result = run(repo, "sleep soon; exit now; exit 999; echo ok")
    assert result.returncode == 0
    assert "ok" in result.stdout
    assert result.stderr.count("bad arguments") == 3


def read_line(proc: subprocess.Popen[bytes], deadline: float) -> str:
    """One line of stdout, failing the test if none arrives before `deadline`."""
    assert proc.stdout is not None
    with selectors.DefaultSelector() as selector:
        selector.register(proc.stdout, selectors.EVENT_READ)
        if not selector.select(timeout=max(0.0, deadline - time.monotonic())):
            proc.kill()
            pytest.fail("the fake agent printed nothing in time")
    return proc.stdout.readline().decode()


def test_sigterm_exits_143(repo: Path) -> None:
    proc = subprocess.Popen(
        [*AGENT, "sleep 60"], cwd=repo, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE
    )
    try:
        line = read_line(proc, time.monotonic() + 30)
        match = STARTED.match(line.strip())
        assert match and int(match.group(1)) == proc.pid
        started = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 143
        assert time.monotonic() - started < 10
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()
