"""The stdlib-only fast path of `fleetbus call`, `tail` and `stop` (server/fastcli.py): it
loads none of the heavy libraries, and it answers byte for byte as the click CLI does.

Real subprocesses and a real hub (stopped by the `home` fixture)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import click
import pytest

from fleetbus.bus import blockingclient
from fleetbus.bus.errors import ConnectionFailed, InvalidInput
from fleetbus.server import fastcli
from fleetbus.server.fastcli import Call, Stop, Tail
from fleetbus.testing.hub import cli_command, stop_hub
from fleetbus.testing.processes import one_line_error
from fleetbus.testing.startup import CLICK, run_loaded


def run(
    argv: list[str], env: dict[str, str], stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv,
        env=env,
        input=stdin,
        stdin=None if stdin is not None else subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )


def loaded(tmp_path: Path, env: dict[str, str], *args: str) -> tuple[int, str, list[str]]:
    """(exit status, stdout, heavy modules loaded) of `fleetbus ARGS`."""
    proc, heavy = run_loaded(tmp_path, env, *args)
    return proc.returncode, proc.stdout, heavy


def test_call_tail_stop_load_no_heavy_library(tmp_path: Path, env: dict[str, str]) -> None:
    # the first call starts the hub, the next ones find it running
    for args in (
        ("call", "hub.ping", '{"echo": "light"}'),
        ("call", "hub.ping"),
        ("call", "--background", "hub.ping", "{}"),
        ("call", "nope.nothing"),
        ("tail", "--since", "0", "--max", "1", "--json"),
        ("stop",),
        ("stop",),
    ):
        code, out, heavy = loaded(tmp_path, env, *args)
        assert heavy == [], f"`fleetbus {' '.join(args)}` loaded {heavy}"
        assert code == (1 if "nope.nothing" in args else 0), (args, out)
    # the check itself sees them when they are loaded
    code, _, heavy = loaded(tmp_path, env, "--embedded", "call", "hub.ping")
    assert code == 0
    assert {"pydantic", "anyio", "click"} <= set(heavy), heavy


def _same(argv: list[str], env: dict[str, str], stdin: str | None = None) -> None:
    """`fleetbus ARGV` through main (fastcli) and through the click CLI: same output."""
    fast = run(cli_command(*argv), env, stdin)
    slow = run([sys.executable, "-c", CLICK, *argv], env, stdin)
    ids = re.compile(r'"(correlation_id|job_id)": "[^"]*"')
    for name in ("returncode", "stdout", "stderr"):
        a, b = getattr(fast, name), getattr(slow, name)
        if isinstance(a, str):
            a, b = ids.sub(r'"\1": "*"', a), ids.sub(r'"\1": "*"', b)
        assert a == b, f"fleetbus {argv}: {name} differs:\nfast:  {a!r}\nclick: {b!r}"


def test_same_answers_as_the_click_cli(env: dict[str, str]) -> None:
    _same(["stop"], env)  # no hub yet
    for argv in (
        ["call", "hub.ping", '{"echo": "x"}'],
        ["call", "hub.ping"],
        ["call", "--timeout", "5", "hub.ping", "{}"],
        ["call", "hub.ping", "--timeout=5", "--", '{"echo": "after --"}'],
        ["call", "--background", "hub.ping"],
        ["call", "nope.nothing", "{}"],
        ["call", "hub.job", "{}"],
        ["call", "hub.ping", '{"echo": "x", "surprise": 1}'],
        ["call", "hub.ping", "{bad json"],
        ["call", "hub.ping", "[1]"],
        ["call", "hub.ping", "--timeout", "0", "{}"],
        ["tail", "--since", "-1", "--max", "1"],
    ):
        _same(argv, env)
    _same(["call", "hub.ping", "-"], env, stdin='{"echo": "\\u00e9\\u001b[31m"}\n')
    _same(["call", "hub.ping", "-"], env, stdin='"' + "x" * (16 * 1024 * 1024) + '"')
    # replayed messages are the same for both: the text format, the JSON one, the filters
    # (two background calls above: four job messages at least)
    for argv in (
        ["tail", "--since", "0", "--max", "4"],
        ["tail", "--since", "0", "--max", "2", "--json", "--topic", "bus.job_completed"],
        ["tail", "--since", "0", "--max", "1", "--channel", "none", "--topic", "bus.*"],
    ):
        _same(argv, env)


def test_stop_twice_and_calls_after(env: dict[str, str]) -> None:
    assert run(cli_command("call", "hub.ping"), env).returncode == 0
    first = run(cli_command("stop"), env)
    assert first.returncode == 0 and re.fullmatch(r"hub \d+ stopped\n", first.stdout), first
    second = run(cli_command("stop"), env)
    assert second.returncode == 0, second
    assert second.stdout == f"no hub is running for {Path(env['FLEETBUS_HOME'])}\n"
    # the next call starts a new hub
    assert json.loads(run(cli_command("call", "hub.ping"), env).stdout)["echo"] == ""


def test_home_option(tmp_path: Path, env: dict[str, str]) -> None:
    other = tmp_path / "other-home"
    proc = run(cli_command("--home", str(other), "call", "hub.ping", '{"echo": "o"}'), env)
    try:
        assert proc.returncode == 0, proc.stderr
        assert (other / "hub.lock").exists(), "the hub ran in the --home given"
        stop = run(cli_command(f"--home={other}", "stop"), env)
        assert stop.returncode == 0 and "stopped" in stop.stdout, stop
    finally:
        stop_hub(other)


def test_connection_errors_exit_2(env: dict[str, str], home: Path) -> None:
    home.parent.mkdir(parents=True, exist_ok=True)
    home.write_text("a file, not a home\n")
    for argv in (["call", "hub.ping"], ["tail"]):
        proc = run(cli_command(*argv), env)
        assert proc.returncode == 2, proc
        assert str(home) in one_line_error(proc)


# -- what fastcli takes, and what it leaves to click ---------------------------------------------
@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["call", "a.b"], (None, Call("a.b", None, False, None))),
        (["call", "a.b", "-"], (None, Call("a.b", "-", False, None))),
        (["call", "--background", "a.b", "{}"], (None, Call("a.b", "{}", True, None))),
        (["call", "a.b", "--timeout", "2", "--timeout=3"], (None, Call("a.b", None, False, 3.0))),
        (["call", "a.b", "--", "-1"], (None, Call("a.b", "-1", False, None))),
        (["--home", "/tmp/x", "stop"], (Path("/tmp/x"), Stop())),
        (["--home=/tmp/y", "--home", "/tmp/x", "stop"], (Path("/tmp/x"), Stop())),
        (
            ["tail", "--topic", "a", "--channel", "c", "--topic", "b", "--json", "--since=3"],
            (None, Tail(("c",), ("a", "b"), True, 3, None)),
        ),
        (["tail", "--max", "2"], (None, Tail((), (), False, None, 2))),
    ],
)
def test_parse_takes(argv: list[str], expected: object) -> None:
    assert fastcli.parse(argv) == expected


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["--help"],
        ["--version"],
        ["--embedded", "call", "a.b"],
        ["call"],
        ["call", "--help"],
        ["call", "-h", "a.b"],
        ["call", "a.b", "{}", "extra"],
        ["call", "a.b", "-1"],
        ["call", "a.b", "--timeout"],
        ["call", "a.b", "--timeout", "soon"],
        ["call", "a.b", "--background=yes"],
        ["call", "a.b", "--unknown"],
        ["tail", "extra"],
        ["tail", "--since", "1.5"],
        ["tail", "--max"],
        ["stop", "now"],
        ["actions", "--help"],
        ["status", "--status", "asleep"],
        ["kill", "a", "b"],
        ["hub"],
        ["--home", "", "stop"],
        ["--home", "--embedded", "stop"],
        ["--home"],
        ["-", "stop"],
    ],
)
def test_parse_leaves_to_click(argv: list[str]) -> None:
    assert fastcli.parse(argv) is None


def test_parse_leaves_a_home_click_refuses_to_click(tmp_path: Path) -> None:
    a_file = tmp_path / "file"
    a_file.write_text("")
    assert fastcli.parse(["--home", str(a_file), "stop"]) is None
    assert fastcli.parse(["--home", str(tmp_path), "stop"]) == (tmp_path, Stop())
    assert fastcli.parse(["--home", str(tmp_path / "new"), "stop"]) == (tmp_path / "new", Stop())


def test_escape_sequences_dropped_as_click_does() -> None:
    for text in ("plain", "\x1b[31mred\x1b[0m", "\x1b[1;2;3mx\x1b[?25l", "a\x1b]0;t\x07b", "é"):
        assert fastcli._ANSI.sub("", text) == click.unstyle(text), repr(text)


def test_reply_errors() -> None:
    err = blockingclient.reply_error(
        {"code": -32000, "message": "m", "data": {"type": "ConnectionFailed", "message": "gone"}}
    )
    assert isinstance(err, ConnectionFailed) and err.message == "gone"
    assert isinstance(blockingclient.reply_error({"code": -32602, "message": "m"}), InvalidInput)
    assert blockingclient.reply_error({"code": -32603, "message": "m"}).message == (
        "the hub failed: m"
    )
