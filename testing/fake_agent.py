"""A fake coding agent for tests and demos: `python -m fleetbus.testing.fake_agent [PROMPT]`.

The prompt comes from the first argument, `--prompt-file PATH`, or stdin. It is a list of
directives separated by newlines or `;`; anything else is ordinary text and ignored:

    sleep SECONDS        echo TEXT            stderr TEXT
    write PATH TEXT      append PATH TEXT     commit MESSAGE
    question TEXT        usage IN OUT COST    limit
    exit CODE            env NAME             received
    wait PATH            ask TEXT

Paths are relative to the working directory (absolute paths and `..` exit 2). `question`
writes `.fleetbus/question.md` and exits 0; `limit` prints the usage-limit line and exits 1;
`commit` runs `git add -A` and `git commit --allow-empty` with a fixed author; `received`
prints the whole prompt it was given and the file named by `$FLEETBUS_CONTEXT_FILE` (each
line after `| `), so a test can see what a followup run was told; `wait` waits until PATH
exists (a gate a test opens). It prints `fake agent started pid=N` first and
`fake agent done` last; SIGTERM exits 143 at once. `ask` asks the way the agentic service
expects: with no `ANSWER.md` in the working directory it writes TEXT to `BLOCKED.md` and
exits 0; once answered it prints `fake agent read the answer: ...` and goes on.

A followup's context block (from a `<fleetbus-context>` line to `</fleetbus-context>`) is
read the way a real agent reads it, as text: no directive in it runs.
Standard library only, and nothing heavy at import: benchmarks start it many times.
"""

from __future__ import annotations

import io
import os
import signal
import sys
import time
from types import FrameType

USAGE = "usage: python -m fleetbus.testing.fake_agent [PROMPT | --prompt-file PATH]"
AUTHOR = {
    "GIT_AUTHOR_NAME": "Fake Agent",
    "GIT_AUTHOR_EMAIL": "fake-agent@fleetbus.invalid",
    "GIT_COMMITTER_NAME": "Fake Agent",
    "GIT_COMMITTER_EMAIL": "fake-agent@fleetbus.invalid",
}
QUESTION_FILE = os.path.join(".fleetbus", "question.md")
BLOCKED_FILE = "BLOCKED.md"  # the agentic service's question and answer files
ANSWER_FILE = "ANSWER.md"
USAGE_PREFIX = "fleetbus-usage:"
LIMIT_LINE = "FAKE USAGE LIMIT reached, try again later"
CONTEXT_OPEN = "<fleetbus-context>"  # the runner's followup context block (runner/followup.py)
CONTEXT_CLOSE = "</fleetbus-context>"


class Stop(Exception):
    """Stop running directives and exit with `code`."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def _on_sigterm(signum: int, frame: FrameType | None) -> None:
    sys.stdout.flush()
    os._exit(143)


def _say(text: str) -> None:
    print(text, flush=True)


def _warn(text: str) -> None:
    print(f"fake agent: {text}", file=sys.stderr, flush=True)


def read_prompt(argv: list[str]) -> str:
    """The prompt from argv (`--prompt-file PATH`, or the arguments joined), else stdin."""
    if argv and argv[0] in ("-h", "--help"):
        _say(USAGE)
        raise Stop(0)
    if argv and (argv[0] == "--prompt-file" or argv[0].startswith("--prompt-file=")):
        path = argv[0].partition("=")[2] if "=" in argv[0] else (argv[1] if len(argv) > 1 else "")
        if not path:
            _warn(f"--prompt-file needs a path\n{USAGE}")
            raise Stop(2)
        try:
            with open(path, encoding="utf-8") as handle:
                return handle.read()
        except OSError as exc:
            _warn(f"cannot read prompt file {path}: {exc.strerror}")
            raise Stop(2) from None
    if argv:
        return " ".join(argv)
    return sys.stdin.read()


def _safe_path(path: str) -> str:
    parts = path.replace("\\", "/").split("/")
    if not path or os.path.isabs(path) or ".." in parts:
        _warn(f"refusing to write {path!r}: paths must be relative and stay inside the workspace")
        raise Stop(2)
    return path


def _write(path: str, text: str, mode: str) -> None:
    path = _safe_path(path)
    parent = os.path.dirname(path)
    if parent:
        os.makedirs(parent, exist_ok=True)
    with open(path, mode, encoding="utf-8") as handle:
        handle.write(text + "\n")


def _commit(message: str) -> None:
    import subprocess  # only the commit directive needs it

    env = {**os.environ, **AUTHOR}
    for argv in (
        ["git", "add", "-A"],
        [
            "git",
            "-c",
            "commit.gpgsign=false",
            "commit",
            "--quiet",
            "--no-verify",
            "--allow-empty",
            "-m",
            message or "fake agent commit",
        ],
    ):
        result = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            _warn(f"{' '.join(argv[:2])} failed: {result.stderr.strip() or result.returncode}")
            raise Stop(result.returncode)
    _say(f"committed: {message}")


def _show(what: str, text: str) -> None:
    _say(f"fake agent received {what}:")
    for line in text.splitlines() or [""]:
        _say(f"| {line}")


def _received(prompt: str) -> None:
    _show("the prompt", prompt)
    path = os.environ.get("FLEETBUS_CONTEXT_FILE")
    if not path:
        _say("fake agent received no context file")
        return
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            _show("the context file", handle.read())
    except OSError as exc:
        _warn(f"cannot read the context file {path}: {exc.strerror}")


def directives(prompt: str) -> list[str]:
    """The lines of `prompt` that may hold directives: split at newlines and `;`, without
    the runner's context block."""
    lines: list[str] = []
    in_context = False
    for line in prompt.splitlines():
        if in_context:
            in_context = line.strip() != CONTEXT_CLOSE
        elif line.strip() == CONTEXT_OPEN:
            in_context = True
        else:
            lines += [part for part in line.split(";") if part.strip()]
    return lines


def run_directive(line: str, prompt: str = "") -> bool:
    """Run one directive (`prompt`: the whole prompt, for `received`); False if `line` is
    ordinary text."""
    word, *tail = line.split(None, 1)
    rest = tail[0].strip() if tail else ""
    try:
        if word == "sleep":
            time.sleep(max(0.0, float(rest)))
        elif word == "echo":
            _say(rest)
        elif word == "stderr":
            print(rest, file=sys.stderr, flush=True)
        elif word in ("write", "append"):
            path, *text = rest.split(None, 1)
            _write(path, text[0].strip() if text else "", "w" if word == "write" else "a")
        elif word == "commit":
            _commit(rest)
        elif word == "question":
            _write(QUESTION_FILE, rest, "w")
            _say("fake agent asked a question")
            raise Stop(0)
        elif word == "ask":
            if os.path.isfile(ANSWER_FILE):
                with open(ANSWER_FILE, encoding="utf-8", errors="replace") as handle:
                    _say(f"fake agent read the answer: {handle.read().strip()}")
            else:
                _write(BLOCKED_FILE, rest, "w")
                _say("fake agent is blocked")
                raise Stop(0)
        elif word == "usage":
            tokens_in, tokens_out, cost = rest.split()
            int(tokens_in), int(tokens_out), float(cost)
            counts = f"input_tokens={tokens_in} output_tokens={tokens_out}"
            _say(f"{USAGE_PREFIX} {counts} cost_usd={cost}")
        elif word == "limit":
            _say(LIMIT_LINE)
            raise Stop(1)
        elif word == "exit":
            code = int(rest)
            if not 0 <= code <= 255:
                raise ValueError(code)
            raise Stop(code)
        elif word == "wait":
            path = _safe_path(rest)
            while not os.path.exists(path):
                time.sleep(0.02)
        elif word == "received":
            _received(prompt)
        elif word == "env":
            if not rest:
                return False
            value = os.environ.get(rest)
            _say(f"{rest} unset" if value is None else f"{rest}={value}")
        else:
            return False
    except (ValueError, OverflowError):
        _warn(f"ignoring {line.strip()!r}: bad arguments")
    return True


def main(argv: list[str] | None = None) -> int:
    """Run the fake agent; returns the exit code."""
    signal.signal(signal.SIGTERM, _on_sigterm)
    args = sys.argv[1:] if argv is None else argv
    _say(f"fake agent started pid={os.getpid()}")
    try:
        prompt = read_prompt(args)
        for line in directives(prompt):
            run_directive(line, prompt)
    except Stop as stop:
        return stop.code
    _say("fake agent done")
    return 0


if __name__ == "__main__":
    for stream in (sys.stdout, sys.stderr):
        if isinstance(stream, io.TextIOWrapper):
            stream.reconfigure(errors="backslashreplace")
    sys.exit(main())
