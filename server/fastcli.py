"""`fleetbus call`, `tail`, `stop` and the commands for people (`status`, `logs`,
`dispatch`, `kill`, ... in people.py) without the full CLI: stdlib only.

Why it exists: these commands run most often, by scripts, by every agent (an agent
reports with `fleetbus call ...`) and by the person watching, each in a new process. The full CLI imports click and
its hub client anyio and pydantic, which took ten times as long as the request itself.
Here the arguments are parsed by hand and the hub is reached with the blocking,
stdlib-only `BlockingClient`; `-X importtime` shows what is left.

`main.py` runs a command here only when `parse` fully understands it (`--home`, and each
command's own options). Anything else (`--help`, `--version`, `--embedded`, an unknown
option, a usage error, a `--home` click would refuse) returns None and goes to the click
CLI (`cli.py`), so both give the same output bytes, messages and exit codes; what they
share (formats, messages, `stop`) lives here and `cli.py` imports it.
"""

from __future__ import annotations

import json
import os
import re
import stat
import sys
import time
from collections.abc import Callable, Mapping
from contextlib import suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple, Union

from fleetbus.bus.blockingclient import BlockingClient
from fleetbus.bus.errors import BusError, ConfigError, ConnectionFailed, StartupError
from fleetbus.bus.paths import Home

if TYPE_CHECKING:
    from .people import PeopleCommand

EXIT_FAILED = 1  # the action refused or failed
EXIT_USAGE = 2  # usage, configuration or connection errors
EXIT_INTERRUPTED = 130
CONNECTION_ERRORS = (ConnectionFailed, StartupError, ConfigError)
SUBSCRIBE_TIMEOUT = 10.0  # as HubClient.subscribe waits for the hub's answer
STOP_TIMEOUT = 30.0
LISTENING = "listening; Ctrl-C to stop"
_ANSI = re.compile(r"\033\[[0-?]*[ -/]*[@-~]")  # click.unstyle's pattern


class UsageError(Exception):
    """A bad argument found after parsing (input that is not JSON): exit 2."""


# -- what the two CLIs share ---------------------------------------------------------------
def echo(text: str, *, err: bool = False) -> None:
    """A line on stdout (stderr with `err`), flushed; escape sequences dropped unless the
    stream is a terminal: what click.echo does."""
    stream = sys.stderr if err else sys.stdout
    if stream is None:
        return
    text += "\n"
    try:
        tty = stream.isatty()
    except Exception:
        tty = False
    if not tty:
        text = _ANSI.sub("", text)
    stream.write(text)
    stream.flush()


def json_text(data: Any) -> str:
    return json.dumps(data, indent=2, default=str)


def json_input(text: str | None, what: str) -> Any:
    """A command's JSON input: {} when none is given, read from stdin for `-`."""
    if text is None:
        return {}
    if text == "-":
        text = sys.stdin.read()
    try:
        return json.loads(text)
    except ValueError as e:
        raise UsageError(
            f'{what}: the input is not valid JSON ({e}); pass an object such as \'{{"name": "ada"}}\''
        ) from None


def stop(home: Home) -> int:
    """Ask the running hub of `home` to stop and wait until its process is gone."""
    try:
        with BlockingClient.open(home.socket) as client:
            pid = int(client.call("hello")["pid"])
            # the hub may close the connection while stopping: that is the answer too
            with suppress(ConnectionFailed):
                client.call("shutdown")
    except ConnectionFailed:
        echo(f"no hub is running for {home.root}")
        return 0
    from fleetbus.bus.lock import is_locked

    # return once the hub process is gone, so a following command never meets a dying hub
    deadline = time.monotonic() + STOP_TIMEOUT
    while (is_locked(home.lock) or process_running(pid)) and time.monotonic() < deadline:
        time.sleep(0.02)
    echo(f"hub {pid} stopped")
    return 0


def process_running(pid: int) -> bool:
    """True while `pid` runs (a zombie, which nobody may reap for a detached hub, is gone)."""
    import psutil

    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


# -- the commands ----------------------------------------------------------------------------
class Call(NamedTuple):
    name: str
    input_json: str | None
    background: bool
    timeout: float | None


class Tail(NamedTuple):
    channels: tuple[str, ...]
    topics: tuple[str, ...]
    as_json: bool
    since: int | None
    limit: int | None
    follow: bool = False


class Stop(NamedTuple):
    pass


Command = Union[Call, Tail, Stop, "PeopleCommand"]  # a forward reference: people imports us


def connect(home: Home, env: Mapping[str, str]) -> BlockingClient:
    """A connection to the home's hub, started (detached) when none answers."""
    from fleetbus.bus.hubstart import check_socket_owner

    path = home.socket
    check_socket_owner(path)
    try:
        return BlockingClient.open(path)
    except ConnectionFailed:
        pass
    from fleetbus.bus.hubstart import ensure_hub_blocking

    return BlockingClient.open(ensure_hub_blocking(home, env))


def call(client: BlockingClient, cmd: Call, payload: Any) -> Any:
    if cmd.background:
        params = {"action": cmd.name, "input": payload, "background": True}
        return {"job_id": str(client.call("perform", params)["job_id"])}
    params = {"action": cmd.name, "input": payload}
    if cmd.timeout is not None:
        params["timeout"] = cmd.timeout
    return client.call("perform", params)


def run(home_option: Path | None, cmd: Command) -> int:
    """Run a parsed command; its exit status."""
    env = dict(os.environ)
    if home_option is not None:
        env["FLEETBUS_HOME"] = str(home_option)
    return execute(env, cmd)


def execute(env: Mapping[str, str], cmd: Command) -> int:
    """Run a command for the home of `env`; its exit status (the click CLI runs the
    people's commands here too)."""
    try:
        home = Home.from_env(env)
        if isinstance(cmd, Stop):
            return stop(home)
        return outcome(lambda: perform(home, env, cmd))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BusError as e:
        return error(e.message, EXIT_USAGE)
    except Exception as e:  # a bug of ours: one line, the traceback only on request
        if os.environ.get("FLEETBUS_DEBUG"):
            raise
        return error(
            f"internal error: {type(e).__name__}: {e} (set FLEETBUS_DEBUG=1 for the traceback)",
            EXIT_USAGE,
        )


def perform(home: Home, env: Mapping[str, str], cmd: Command) -> int:
    from . import people

    if isinstance(cmd, Call):
        payload = json_input(cmd.input_json, f"fleetbus call {cmd.name}")
        with connect(home, env) as client:
            result = call(client, cmd, payload)
        echo(json_text(result))
        return 0
    if isinstance(cmd, Tail):
        return people.tail(home, env, cmd)
    assert not isinstance(cmd, Stop)
    with connect(home, env) as client:
        return people.execute(people.BlockingLink(client), cmd)


def outcome(fn: Callable[[], int]) -> int:
    """`fn()`'s exit status; an error it raises is one line on stderr and its exit code."""
    try:
        return fn()
    except UsageError as e:
        return error(str(e), EXIT_USAGE)
    except CONNECTION_ERRORS as e:
        return error(e.message, EXIT_USAGE)
    except BusError as e:
        return error(e.message, EXIT_FAILED)


def error(message: str, code: int) -> int:
    echo(f"error: {message}", err=True)
    return code


# -- the arguments -----------------------------------------------------------------------------
def parse(argv: list[str]) -> tuple[Path | None, Command] | None:
    """(the --home given, the command) for argv this module runs exactly as the click CLI
    would; None for anything else."""
    home: Path | None = None
    rest = list(argv)
    while rest and rest[0].startswith("-"):
        option = rest.pop(0)
        if option == "--home" and rest:
            value = rest.pop(0)
        elif option.startswith("--home="):
            value = option.removeprefix("--home=")
        else:
            return None
        if not value or value.startswith("-") or not directory_ok(value):
            return None
        home = Path(value)
    if not rest:
        return None
    try:
        return home, command(rest[0], rest[1:])
    except ValueError:
        return None


def directory_ok(value: str) -> bool:
    """What click.Path(file_okay=False) accepts: nothing there, or no file and readable."""
    try:
        st = os.stat(value)
    except OSError:
        return True
    return not stat.S_ISREG(st.st_mode) and os.access(value, os.R_OK)


def command(name: str, args: list[str]) -> Command:
    """The command `name` with its arguments; ValueError when click should judge them."""
    if name == "call":
        opts, positional = options(args, flags={"--background"}, valued={"--timeout"})
        if not 1 <= len(positional) <= 2:
            raise ValueError("call takes NAME [JSON]")
        timeout = opts.get("--timeout")
        return Call(
            positional[0],
            positional[1] if len(positional) == 2 else None,
            "--background" in opts,
            float(timeout[-1]) if timeout else None,
        )
    if name == "tail":
        valued = {"--channel", "--topic", "--since", "--max"}
        opts, positional = options(args, flags={"--json", "--follow", "-f"}, valued=valued)
        if positional:
            raise ValueError("tail takes no arguments")
        since, limit = opts.get("--since"), opts.get("--max")
        return Tail(
            tuple(opts.get("--channel", ())),
            tuple(opts.get("--topic", ())),
            "--json" in opts,
            int(since[-1]) if since else None,
            int(limit[-1]) if limit else None,
            "--follow" in opts or "-f" in opts,
        )
    if name == "stop":
        if args:
            raise ValueError("stop takes no arguments")
        return Stop()
    return people_command(name, args)


def people_command(name: str, args: list[str]) -> PeopleCommand:
    """A command of people.py, read as its click definition in cli.py reads it."""
    from . import people as p

    def last(opts: dict[str, list[str]], name: str, choices: tuple[str, ...] = ()) -> str | None:
        values = opts.get(name)
        if values and choices and values[-1] not in choices:
            raise ValueError(f"{name}: not one of {choices}")
        return values[-1] if values else None

    def number(opts: dict[str, list[str]], name: str, default: int) -> int:
        value = last(opts, name)
        return default if value is None else int(value)  # ValueError: click says why

    def exactly(positional: list[str], n: int) -> list[str]:
        if len(positional) != n:
            raise ValueError(f"{name} takes {n} argument(s)")
        return positional

    json_flag = {"--json"}
    if name == "status":
        valued = {"--agent", "--status", "--workspace", "--limit"}
        opts, positional = options(args, flags=json_flag, valued=valued)
        exactly(positional, 0)
        return p.Status(
            last(opts, "--agent"),
            last(opts, "--status", p.RUN_STATUSES),
            last(opts, "--workspace"),
            number(opts, "--limit", 20),
            "--json" in opts,
        )
    if name == "logs":
        opts, positional = options(args, flags={"--json", "--follow", "-f"}, valued=set())
        (run_id,) = exactly(positional, 1)
        return p.Logs(run_id, "--follow" in opts or "-f" in opts, "--json" in opts)
    if name == "dispatch":
        valued = {"--priority", "--mode", "--model"}
        opts, positional = options(args, flags=json_flag, valued=valued)
        if len(positional) < 3:
            raise ValueError("dispatch takes AGENT WORKSPACE PROMPT...")
        return p.Dispatch(
            positional[0],
            positional[1],
            tuple(positional[2:]),
            last(opts, "--priority", p.PRIORITIES),
            last(opts, "--mode", p.SESSION_MODES),
            last(opts, "--model"),
            "--json" in opts,
        )
    if name == "kill":
        opts, positional = options(
            args, flags={"--json", "--all"}, valued={"--agent", "--workspace"}
        )
        if len(positional) > 1:
            raise ValueError("kill takes one RUN_ID at most")
        return p.Kill(
            positional[0] if positional else None,
            last(opts, "--agent"),
            last(opts, "--workspace"),
            "--all" in opts,
            "--json" in opts,
        )
    if name in ("freeze", "unfreeze"):
        opts, positional = options(args, flags=json_flag, valued=set())
        exactly(positional, 0)
        return (p.Freeze if name == "freeze" else p.Unfreeze)("--json" in opts)
    if name == "tasks":
        opts, positional = options(args, flags=json_flag, valued={"--status", "--limit"})
        exactly(positional, 0)
        return p.Tasks(
            last(opts, "--status", p.TASK_STATUSES), number(opts, "--limit", 20), "--json" in opts
        )
    if name == "task":
        opts, positional = options(args, flags=json_flag, valued=set())
        (task_id,) = exactly(positional, 1)
        return p.Task(task_id, "--json" in opts)
    if name == "answer":
        opts, positional = options(args, flags=json_flag, valued=set())
        if len(positional) < 2:
            raise ValueError("answer takes TASK_ID TEXT...")
        return p.Answer(positional[0], tuple(positional[1:]), "--json" in opts)
    if name == "actions":
        opts, positional = options(args, flags={"--json", "--exposed"}, valued=set())
        exactly(positional, 0)
        return p.Actions("--exposed" in opts, "--json" in opts)
    raise ValueError(f"not a command run here: {name}")


def options(
    args: list[str], *, flags: set[str], valued: set[str]
) -> tuple[dict[str, list[str]], list[str]]:
    """The options (each with its values, in order) and the positional arguments, read
    as click reads them; ValueError for an option not in `flags` or `valued`."""
    found: dict[str, list[str]] = {}
    positional: list[str] = []
    rest = list(args)
    while rest:
        arg = rest.pop(0)
        if arg == "--":
            positional += rest
            break
        if arg == "-" or not arg.startswith("-"):
            positional.append(arg)
            continue
        name, eq, value = arg.partition("=")
        if name in flags and not eq:
            found.setdefault(name, []).append("")
        elif name in valued and (eq or rest):
            found.setdefault(name, []).append(value if eq else rest.pop(0))
        else:
            raise ValueError(f"an option click should judge: {arg}")
    return found, positional
