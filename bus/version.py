"""The installed fleetbus version, looked up once (metadata reads are slow); stdlib only."""

from __future__ import annotations

import functools

FALLBACK = "0.1.0"


@functools.cache
def version() -> str:
    try:
        from importlib.metadata import version as dist_version

        return dist_version("fleetbus")
    except Exception:
        return FALLBACK
