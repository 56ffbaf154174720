"""`python -m fleetbus.server` is the `fleetbus` command."""

from .main import main

main()
