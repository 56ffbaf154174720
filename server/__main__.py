"""`python -m fleetbus.server` is the `fleetbus` command."""

from .cli import main

main()
