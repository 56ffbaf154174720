"""The `fleetbus` command's entry point: `fleetbus serve` (stdio) goes straight to the
stdlib-only relay, so an MCP client gets its `initialize` answer at once; `call`, `tail`,
`stop` and the commands for people (`status`, `logs`, `dispatch`, `kill`, `freeze`,
`unfreeze`, `tasks`, `task`, `answer`, `actions`) go to the stdlib-only `fastcli` when it
understands their arguments; every other command loads the full CLI."""

from __future__ import annotations

import sys
from pathlib import Path


def stdio_serve(args: list[str]) -> Path | bool | None:
    """For `[--home H] serve` with no other option: the home given (None: the default);
    False for anything else, which the full CLI handles."""
    home: Path | None = None
    rest = list(args)
    while rest and rest[0].startswith("--home"):
        option = rest.pop(0)
        if option.startswith("--home="):
            home = Path(option.removeprefix("--home="))
        elif option == "--home" and rest:
            home = Path(rest.pop(0))
        else:
            return False
    if rest != ["serve"]:
        return False
    return home


def main() -> None:
    args = sys.argv[1:]
    home = stdio_serve(args)
    if home is not False:
        from .relay import main as relay_main

        sys.exit(relay_main(home if isinstance(home, Path) else None))
    from . import fastcli

    parsed = fastcli.parse(args)
    if parsed is not None:
        sys.exit(fastcli.run(*parsed))
    from .cli import main as cli_main

    cli_main()
