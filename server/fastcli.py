"""`fleetbus call`, `tail` and `stop` without the full CLI: stdlib only.

Why it exists: these commands run most often, by scripts and by every agent (an agent
reports with `fleetbus call ...`), each in a new process. The full CLI imports click and
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
from collections.abc import Mapping
from contextlib import suppress
from pathlib import Path
from typing import Any, NamedTuple

from fleetbus.bus.blockingclient import BlockingClient
from fleetbus.bus.errors import BusError, ConfigError, ConnectionFailed, StartupError
from fleetbus.bus.paths import Home

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


def format_envelope(env: dict[str, Any]) -> str:
    stamp = time.strftime("%H:%M:%S", time.localtime(env.get("ts", time.time())))
    data = env.get("data", {})
    if env.get("topic") == "channel":
        return f"{stamp} [{data.get('channel')}] {data.get('content')}"
    return f"{stamp} {env.get('topic')} {json.dumps(data, default=str)}"


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


class Stop(NamedTuple):
    pass


Command = Call | Tail | Stop


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


def tail(client: BlockingClient, cmd: Tail) -> None:
    wanted = list(cmd.topics) + (["channel"] if cmd.channels else [])
    params: dict[str, Any] = {"topics": wanted or None, "buffer": 1024}  # as HubClient's
    if cmd.since is not None:
        params["since"] = cmd.since
    sid = str(client.call("subscribe", params, timeout=SUBSCRIBE_TIMEOUT)["subscription"])
    echo(LISTENING, err=True)
    count = 0
    for note in client.notifications():
        env = note.get("params", {})
        if str(env.get("subscription")) != sid:
            continue
        if (
            cmd.channels
            and env.get("topic") == "channel"
            and env["data"].get("channel") not in cmd.channels
        ):
            continue
        echo(json.dumps(env, default=str) if cmd.as_json else format_envelope(env))
        count += 1
        if cmd.limit is not None and count >= cmd.limit:
            return


def run(home_option: Path | None, cmd: Command) -> int:
    """Run a parsed command; its exit status."""
    try:
        env = dict(os.environ)
        if home_option is not None:
            env["FLEETBUS_HOME"] = str(home_option)
        home = Home.from_env(env)
        if isinstance(cmd, Stop):
            return stop(home)
        try:
            if isinstance(cmd, Call):
                payload = json_input(cmd.input_json, f"fleetbus call {cmd.name}")
                with connect(home, env) as client:
                    result = call(client, cmd, payload)
                echo(json_text(result))
            else:
                with connect(home, env) as client:
                    tail(client, cmd)
        except UsageError as e:
            return error(str(e), EXIT_USAGE)
        except CONNECTION_ERRORS as e:
            return error(e.message, EXIT_USAGE)
        except BusError as e:
            return error(e.message, EXIT_FAILED)
        return 0
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
        opts, positional = options(args, flags={"--json"}, valued=valued)
        if positional:
            raise ValueError("tail takes no arguments")
        since, limit = opts.get("--since"), opts.get("--max")
        return Tail(
            tuple(opts.get("--channel", ())),
            tuple(opts.get("--topic", ())),
            "--json" in opts,
            int(since[-1]) if since else None,
            int(limit[-1]) if limit else None,
        )
    if name == "stop":
        if args:
            raise ValueError("stop takes no arguments")
        return Stop()
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
