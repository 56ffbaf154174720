"""The `fleetbus` command line.

Exit codes: 0 success; 1 the action refused or failed (the clear message on stderr);
2 usage, configuration or connection errors. Never a traceback.
"""

from __future__ import annotations

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

from . import fastcli, people
from .fastcli import CONNECTION_ERRORS, EXIT_FAILED, EXIT_USAGE

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
    """List the hub's actions with their whole descriptions."""
    run_people(opts, people.Actions(exposed, as_json))


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
@click.option("--follow", "-f", is_flag=True, help="When the hub goes away, wait for the next one.")
@pass_options
def tail(
    opts: Options,
    channels: tuple[str, ...],
    topics: tuple[str, ...],
    as_json: bool,
    since: int | None,
    limit: int | None,
    follow: bool,
) -> None:
    """Print the hub's messages as they are published.

    One line each with its sequence number (for --since); exit 2 when the hub goes away,
    unless --follow (Ctrl-C to stop)."""
    if not opts.embedded:
        sys.exit(
            fastcli.execute(opts.env, fastcli.Tail(channels, topics, as_json, since, limit, follow))
        )
    view = people.TailView(topics, channels, as_json)

    async def go(client: Client) -> None:
        count = 0
        async with client.subscribe(view.topics or None, since=since) as messages:
            click.echo(fastcli.LISTENING, err=True)
            async for env in messages:
                text = view.line(env)
                if text is None:
                    continue
                click.echo(text)
                count += 1
                if limit is not None and count >= limit:
                    return

    opts.run(go)


@cli.command()
@pass_options
def stop(opts: Options) -> None:
    """Ask the running hub of this home to stop (its agents are left running)."""
    fastcli.stop(opts.home)


# -- commands for people (server/people.py; fastcli runs the same code without click) --------
class EmbeddedLink:
    """A `people.Link` to the hub in this process (`--embedded`), for a command that runs
    in a worker thread."""

    def __init__(self, client: Client) -> None:
        self.client = client

    def perform(self, action: str, payload: dict[str, Any]) -> Any:
        return anyio.from_thread.run(self.client.perform, action, payload)

    def actions(self, exposed_only: bool) -> list[dict[str, Any]]:
        async def go() -> list[dict[str, Any]]:
            return await self.client.actions(exposed_only=exposed_only)

        return anyio.from_thread.run(go)


def run_people(opts: Options, cmd: people.PeopleCommand) -> NoReturn:
    if not opts.embedded:
        sys.exit(fastcli.execute(opts.env, cmd))

    async def go(client: Client) -> int:
        link = EmbeddedLink(client)
        return await anyio.to_thread.run_sync(fastcli.outcome, lambda: people.execute(link, cmd))

    sys.exit(opts.run(go))


JSON_HELP = "Print the hub's answer as JSON."


@cli.command()
@click.option("--agent", help="Only runs of this agent.")
@click.option("--status", type=click.Choice(people.RUN_STATUSES), help="Only runs in this state.")
@click.option("--workspace", help="Only runs of this workspace.")
@click.option("--limit", type=int, default=20, show_default=True, help="How many runs to list.")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@pass_options
def status(
    opts: Options,
    agent: str | None,
    status: str | None,
    workspace: str | None,
    limit: int,
    as_json: bool,
) -> None:
    """Show lanes, the queue and the newest runs.

    Frozen or not, pools backing off, lanes of installed agents, why queued runs wait, and
    the newest runs with their times, exit codes, tokens, cost and questions."""
    run_people(opts, people.Status(agent, status, workspace, limit, as_json))


@cli.command()
@click.argument("run_id")
@click.option("--follow", "-f", is_flag=True, help="Follow the output until the run ends.")
@click.option("--json", "as_json", is_flag=True, help="The run and its output as JSON.")
@pass_options
def logs(opts: Options, run_id: str, follow: bool, as_json: bool) -> None:
    """Print a run's output (its last 4 MiB)."""
    run_people(opts, people.Logs(run_id, follow, as_json))


@cli.command()
@click.argument("agent")
@click.argument("workspace")
@click.argument("prompt", nargs=-1, required=True)
@click.option("--priority", type=click.Choice(people.PRIORITIES), help="Queue order.")
@click.option(
    "--mode",
    type=click.Choice(people.SESSION_MODES),
    help="When the workspace has an active run: wait, run after it, or interrupt it.",
)
@click.option("--model", help="Model for the agent; its default when omitted.")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@pass_options
def dispatch(
    opts: Options,
    agent: str,
    workspace: str,
    prompt: tuple[str, ...],
    priority: str | None,
    mode: str | None,
    model: str | None,
    as_json: bool,
) -> None:
    """Run an agent on a prompt in a workspace.

    PROMPT's words are joined by spaces; `-` reads the prompt from stdin."""
    run_people(opts, people.Dispatch(agent, workspace, prompt, priority, mode, model, as_json))


@cli.command()
@click.argument("run_id", required=False)
@click.option("--agent", help="Every running or queued run of this agent.")
@click.option("--workspace", help="This workspace's active run and its waiting prompts.")
@click.option("--all", "everything", is_flag=True, help="Every run, and freeze dispatch.")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@pass_options
def kill(
    opts: Options,
    run_id: str | None,
    agent: str | None,
    workspace: str | None,
    everything: bool,
    as_json: bool,
) -> None:
    """Kill runs, or cancel queued ones.

    Give exactly one of RUN_ID, --agent, --workspace or --all."""
    run_people(opts, people.Kill(run_id, agent, workspace, everything, as_json))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@pass_options
def freeze(opts: Options, as_json: bool) -> None:
    """Freeze dispatch: running runs go on, nothing new starts."""
    run_people(opts, people.Freeze(as_json))


@cli.command()
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@pass_options
def unfreeze(opts: Options, as_json: bool) -> None:
    """Unfreeze dispatch: queued runs that fit start."""
    run_people(opts, people.Unfreeze(as_json))


@cli.command()
@click.option("--status", type=click.Choice(people.TASK_STATUSES), help="Only tasks in this state.")
@click.option("--limit", type=int, default=20, show_default=True, help="How many tasks to list.")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@pass_options
def tasks(opts: Options, status: str | None, limit: int, as_json: bool) -> None:
    """List the agentic coding tasks, newest first."""
    run_people(opts, people.Tasks(status, limit, as_json))


@cli.command()
@click.argument("task_id")
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@pass_options
def task(opts: Options, task_id: str, as_json: bool) -> None:
    """Show one agentic task in detail.

    Status, agent, branch, runs, question and answer, and the end of its output."""
    run_people(opts, people.Task(task_id, as_json))


@cli.command()
@click.argument("task_id")
@click.argument("text", nargs=-1, required=True)
@click.option("--json", "as_json", is_flag=True, help=JSON_HELP)
@pass_options
def answer(opts: Options, task_id: str, text: tuple[str, ...], as_json: bool) -> None:
    """Answer a blocked task's question.

    TEXT's words are joined by spaces (`-` reads stdin); a new run goes on with it."""
    run_people(opts, people.Answer(task_id, text, as_json))


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
