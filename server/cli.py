"""The `fleetbus` command line.

Exit codes: 0 success; 1 the action refused or failed (the clear message on stderr);
2 usage, configuration or connection errors. Never a traceback.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import anyio
import click

from fleetbus.bus.client import Client, connect
from fleetbus.bus.errors import BusError, unwrap_group
from fleetbus.bus.paths import Home
from fleetbus.bus.version import version

from . import fastcli
from .fastcli import CONNECTION_ERRORS, EXIT_FAILED, EXIT_USAGE, format_envelope

T = TypeVar("T")


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    click.echo(f"error: {message}", err=True)
    sys.exit(code)


class Options:
    def __init__(self, home: Path | None, embedded: bool) -> None:
        env = dict(os.environ)
        if home is not None:
            env["FLEETBUS_HOME"] = str(home)
        self.env = env
        self.home = Home.from_env(env)
        self.embedded = embedded

    def run(self, fn: Callable[[Client], Awaitable[T]], *, autostart: bool = True) -> T:
        """Connect to the hub (or run it embedded), run `fn`, map errors to exit codes."""

        async def main() -> T:
            async with connect(
                self.home, embedded=self.embedded, autostart=autostart, env=self.env
            ) as client:
                return await fn(client)

        try:
            return anyio.run(main)
        except CONNECTION_ERRORS as e:
            fail(e.message, EXIT_USAGE)
        except BusError as e:
            fail(e.message, EXIT_FAILED)
        except KeyboardInterrupt:
            sys.exit(130)


pass_options = click.make_pass_decorator(Options)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(version(), "--version", prog_name="fleetbus")
@click.option(
    "--home",
    type=click.Path(file_okay=False, path_type=Path),
    help="The hub's home (default: $FLEETBUS_HOME or ~/.local/state/fleetbus).",
)
@click.option(
    "--embedded", is_flag=True, help="Run the hub in this process instead of using the shared one."
)
@click.pass_context
def cli(ctx: click.Context, home: Path | None, embedded: bool) -> None:
    """fleetbus: run a fleet of coding agents on a plugin bus."""
    ctx.obj = Options(home, embedded)


def parse_json_input(text: str | None, what: str) -> Any:
    try:
        return fastcli.json_input(text, what)
    except fastcli.UsageError as e:
        fail(str(e))


def print_json(data: Any) -> None:
    click.echo(fastcli.json_text(data))


@cli.command()
@click.argument("name")
@click.argument("input_json", metavar="[JSON]", required=False)
@click.option("--background", is_flag=True, help="Start it as a job and print the job id at once.")
@click.option("--timeout", type=float, help="Give up after this many seconds.")
@pass_options
def call(
    opts: Options, name: str, input_json: str | None, background: bool, timeout: float | None
) -> None:
    """Perform action NAME with a JSON object as input (`-` reads it from stdin)."""
    payload = parse_json_input(input_json, f"fleetbus call {name}")

    async def go(client: Client) -> Any:
        if background:
            return {"job_id": await client.perform_async(name, payload)}
        return await client.perform(name, payload, timeout=timeout)

    print_json(opts.run(go))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help="Print the list with JSON Schemas.")
@click.option("--exposed", is_flag=True, help="Only the actions exposed as MCP tools.")
@pass_options
def actions(opts: Options, as_json: bool, exposed: bool) -> None:
    """List the hub's actions."""

    async def go(client: Client) -> list[dict[str, Any]]:
        return await client.actions(exposed_only=exposed)

    items = opts.run(go)
    if as_json:
        print_json(items)
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("action", "plugin", "flags", "description", box=None)
    for a in items:
        flags = ",".join(f for f in ("exposed", "mutating", "destructive") if a.get(f)) or "-"
        table.add_row(
            a["name"],
            a["plugin"],
            flags,
            (a["description"] or "").splitlines()[0] if a["description"] else "",
        )
    Console().print(table)


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@pass_options
def plugins(opts: Options, as_json: bool) -> None:
    """List loaded plugins and the ones skipped."""

    async def go(client: Client) -> dict[str, Any]:
        return await client.plugins()

    data = opts.run(go)
    if as_json:
        print_json(data)
        return
    for p in data["plugins"]:
        ver = f" {p['version']}" if p.get("version") else ""
        click.echo(
            f"{p['name']}{ver}  ({p['source']}: {p['module']})  hooks: {', '.join(p['hooks']) or '-'}"
        )
    for s in data["skipped"]:
        click.echo(f"{s['name']}  skipped: {s['why']}")


@cli.command()
@click.option(
    "--channel", "channels", multiple=True, help="Only channel events on this channel (repeatable)."
)
@click.option(
    "--topic", "topics", multiple=True, help="Only messages on this topic; `runner.*` for a prefix."
)
@click.option("--json", "as_json", is_flag=True, help="One JSON envelope per line.")
@click.option("--since", type=int, help="First replay recent messages after this sequence number.")
@click.option("--max", "limit", type=int, help="Exit after this many messages.")
@pass_options
def tail(
    opts: Options,
    channels: tuple[str, ...],
    topics: tuple[str, ...],
    as_json: bool,
    since: int | None,
    limit: int | None,
) -> None:
    """Print the hub's messages as they are published (Ctrl-C to stop)."""
    wanted = list(topics) + (["channel"] if channels else [])

    async def go(client: Client) -> None:
        count = 0
        async with client.subscribe(wanted or None, since=since) as messages:
            click.echo(fastcli.LISTENING, err=True)
            async for env in messages:
                if (
                    channels
                    and env.get("topic") == "channel"
                    and env["data"].get("channel") not in channels
                ):
                    continue
                click.echo(json.dumps(env, default=str) if as_json else format_envelope(env))
                count += 1
                if limit is not None and count >= limit:
                    return

    opts.run(go)


@cli.command()
@pass_options
def stop(opts: Options) -> None:
    """Ask the running hub of this home to stop (its agents are left running)."""
    fastcli.stop(opts.home)


@cli.command()
@click.option("--idle-timeout", type=float, help="Exit after this many idle seconds (0: never).")
@pass_options
def hub(opts: Options, idle_timeout: float | None) -> None:
    """Run the hub of this home in the foreground."""
    from fleetbus.bus.hub import Hub

    logging.basicConfig(
        level=os.environ.get("FLEETBUS_LOG_LEVEL", "INFO").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if idle_timeout is None and os.environ.get("FLEETBUS_IDLE_TIMEOUT"):
        try:
            idle_timeout = float(os.environ["FLEETBUS_IDLE_TIMEOUT"])
        except ValueError:
            fail("FLEETBUS_IDLE_TIMEOUT must be a number of seconds")

    async def main() -> None:
        the_hub = Hub(opts.home, env=opts.env, idle_timeout=idle_timeout)
        with unwrap_group():
            await _run_until_signal(the_hub)

    async def _run_until_signal(the_hub: Hub) -> None:
        async with anyio.create_task_group() as tg:

            async def on_signal() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        the_hub.request_stop()

            tg.start_soon(on_signal)
            await the_hub.run()
            tg.cancel_scope.cancel()

    try:
        anyio.run(main)
    except BusError as e:
        fail(e.message, EXIT_USAGE)


@cli.command()
@click.option("--http", "use_http", is_flag=True, help="Serve streamable HTTP instead of stdio.")
@click.option("--host", default="127.0.0.1", show_default=True, help="HTTP: address to bind.")
@click.option("--port", default=8765, show_default=True, type=int, help="HTTP: port (0 picks one).")
@click.option(
    "--allowed-host",
    "allowed_hosts",
    multiple=True,
    help="HTTP: a Host header clients use (repeatable).",
)
@click.option(
    "--allowed-origin",
    "allowed_origins",
    multiple=True,
    help="HTTP: an allowed Origin (repeatable).",
)
@pass_options
def serve(
    opts: Options,
    use_http: bool,
    host: str,
    port: int,
    allowed_hosts: tuple[str, ...],
    allowed_origins: tuple[str, ...],
) -> None:
    """Serve MCP (stdio by default): every exposed action as a tool, runs' events as channel
    events. HTTP requires the bearer token in $FLEETBUS_TOKEN or $FLEETBUS_HOME/token."""
    from .serve import HttpOptions, serve_http, serve_stdio

    logging.basicConfig(
        level=os.environ.get("FLEETBUS_LOG_LEVEL", "WARNING").upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )

    async def main() -> None:
        if use_http:
            options = HttpOptions(host, port, list(allowed_hosts), list(allowed_origins))
            await serve_http(opts.home, opts.env, options, embedded=opts.embedded)
        else:
            await serve_stdio(opts.home, opts.env, embedded=opts.embedded)

    try:
        anyio.run(main)
    except BusError as e:
        fail(e.message, EXIT_USAGE)


@cli.command()
@pass_options
def demo(opts: Options) -> None:
    """Show the bus at work on an embedded hub under $FLEETBUS_HOME/demo."""
    from .demo import run_demo

    try:
        anyio.run(run_demo, opts.home.root / "demo", opts.env)
    except BusError as e:
        fail(e.message, EXIT_USAGE)


@cli.command()
@pass_options
def top(opts: Options) -> None:
    """A live view of the fleet: lanes, the queue, runs and channel events.

    Keys: f freeze, u unfreeze, up/down or j/k select a run, K kill it (y confirms),
    l or Enter open its log in $PAGER (default less), q quit.
    """
    from . import top as top_view

    problem = top_view.terminal_problem()
    if problem:
        fail(problem)
    sys.exit(opts.run(lambda client: top_view.run_top(client, opts.home.root)))


def main() -> None:
    try:
        cli(standalone_mode=True)
    except KeyboardInterrupt:
        sys.exit(130)
    except BusError as e:
        fail(e.message, EXIT_USAGE)
    except Exception as e:  # a bug of ours: one line, the traceback only on request
        if os.environ.get("FLEETBUS_DEBUG"):
            raise
        fail(f"internal error: {type(e).__name__}: {e} (set FLEETBUS_DEBUG=1 for the traceback)")
