"""The hub socket's wire, shared by both ends: newline-delimited JSON-RPC 2.0, its limits,
its error codes, the encoding of one message, and the id of a request too large to read.

Standard library only: the hub's server (`ipc.py`), its clients (`client.py`, the blocking
`blockingclient.py` of the fast CLI) and the stdio relay all import it, and the last two
must start without anyio or pydantic.
"""

from __future__ import annotations

import json
import re
from typing import Any

MAX_LINE = 16 * 1024 * 1024  # the largest request (one line), either way on the socket
TOO_LARGE = f"request larger than {MAX_LINE // (1024 * 1024)} MiB (the limit of one request)"
PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS = -32700, -32600, -32601, -32602
INTERNAL_ERROR = -32603  # the hub's own fault (logged with its traceback)
BUS_ERROR = -32000  # a BusError: `data` carries its type, code and message
CALLER_ERRORS = frozenset({PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS})

# json.dumps with any option builds a new encoder on every call; one serves them all
_encoder = json.JSONEncoder(separators=(",", ":"), default=str)


def encode(obj: Any) -> bytes:
    """One message as a line of compact JSON."""
    return _encoder.encode(obj).encode() + b"\n"


_ID = re.compile(
    rb'^\s*\{\s*(?:"jsonrpc"\s*:\s*"2\.0"\s*,\s*)?"id"\s*:\s*(-?\d{1,18}|"[^"\\]{0,200}")'
)


def guess_id(head: bytes) -> Any:
    """The id of a request too large to read, when it leads the object (as clients write it)."""
    m = _ID.match(head)
    return json.loads(m.group(1)) if m else None
