"""A blocking client of the hub's socket, stdlib only: for commands that must start fast.

`fleetbus call`, `tail` and `stop` (and the agents, which run `fleetbus call`) make one or
two requests and exit; importing anyio and pydantic would cost them several times the
request itself. This client speaks the same newline-delimited JSON-RPC 2.0 as `HubClient`
(`client.py`) and maps the hub's errors the same way (`reply_error`, shared by both).
"""

from __future__ import annotations

import json
import os
import socket
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .errors import BusError, ConnectionFailed, InvalidInput, error_from_dict
from .wire import BUS_ERROR, CALLER_ERRORS, INTERNAL_ERROR, MAX_LINE, TOO_LARGE, encode

__all__ = ["INTERNAL_ERROR", "BlockingClient", "reply_error", "too_large_request"]

HUB_CLOSED = "the hub closed the connection"


def reply_error(err: Any) -> BusError:
    """The error a hub's JSON-RPC reply stands for, blamed by its code: the caller's
    (InvalidInput), a bus error (its own type), or the hub's own (BusError)."""
    if not isinstance(err, dict):
        return BusError(f"the hub answered with a malformed error: {err!r}")
    data, code = err.get("data"), err.get("code")
    message = str(err.get("message", "the request failed"))
    if code == BUS_ERROR and isinstance(data, dict) and "type" in data:
        return error_from_dict(data)
    if code in CALLER_ERRORS:
        return InvalidInput(message)
    return BusError(f"the hub failed: {message}")


def too_large_request(method: str, params: Mapping[str, Any]) -> InvalidInput:
    """The error for a request the hub would refuse for its size (it is never sent)."""
    what = params.get("action") if method == "perform" else None
    return InvalidInput(
        f"{what or method}: {TOO_LARGE}", [{"field": "(input)", "message": TOO_LARGE}]
    )


class BlockingClient:
    """One connection to a hub's socket; requests one at a time. A context manager."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buf = bytearray()
        self.scanned = 0  # bytes of `buf` known to hold no newline
        self.next_id = 0
        self.closed = False  # the hub closed the connection
        self.notes: list[dict[str, Any]] = []  # notifications read while awaiting a reply

    @classmethod
    def open(cls, path: Path) -> BlockingClient:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(os.fspath(path))
        except OSError as e:
            sock.close()
            raise ConnectionFailed(f"cannot connect to the hub at {path}: {e.strerror or e}") from e
        return cls(sock)

    def __enter__(self) -> BlockingClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()

    def call(
        self, method: str, params: Mapping[str, Any] | None = None, *, timeout: float | None = None
    ) -> Any:
        """Send one request and wait for its reply (notifications meanwhile go to `notes`);
        errors come back as BusError subclasses. `timeout`: seconds, then ConnectionFailed."""
        if self.closed:
            raise ConnectionFailed("the connection to the hub is closed")
        self.next_id += 1
        req_id = self.next_id
        params = dict(params or {})
        data = encode({"jsonrpc": "2.0", "id": req_id, "method": method, "params": params})
        if len(data) > MAX_LINE:  # the hub would refuse it: say so without sending it
            raise too_large_request(method, params)
        try:
            self.sock.sendall(data)
        except OSError as e:
            raise ConnectionFailed(f"lost the connection to the hub: {e}") from e
        self.sock.settimeout(timeout)
        try:
            while True:
                msg = self.receive()
                if msg is None:
                    raise ConnectionFailed(HUB_CLOSED)
                if msg.get("id") == req_id and ("result" in msg or "error" in msg):
                    break
                if msg.get("method") == "message":
                    self.notes.append(msg)
        except TimeoutError:
            raise ConnectionFailed(f"the hub did not answer {method} within {timeout:g}s") from None
        finally:
            self.sock.settimeout(None)
        if "error" in msg:
            raise reply_error(msg["error"])
        return msg.get("result")

    def receive(self) -> dict[str, Any] | None:
        """The next message from the hub; None once it closed the connection. A line over
        MAX_LINE is an error reply (to the only request in flight)."""
        while True:
            end = self.buf.find(b"\n", self.scanned)
            if 0 <= end <= MAX_LINE:
                line = bytes(self.buf[:end])
                del self.buf[: end + 1]
                self.scanned = 0
                if not line.strip():
                    continue
                msg = json.loads(line)
                return msg if isinstance(msg, dict) else {}
            if end > MAX_LINE or len(self.buf) > MAX_LINE:
                self.skip_line()
                message = f"the reply was a {TOO_LARGE}"
                return {"id": self.next_id, "error": {"code": INTERNAL_ERROR, "message": message}}
            self.scanned = len(self.buf)
            if not self.fill():
                return None

    def fill(self) -> bool:
        """Read what the hub sent; False at the end of the connection."""
        try:
            chunk = self.sock.recv(1 << 16)
        except TimeoutError:  # the caller's deadline, not the end of the connection
            raise
        except OSError:
            chunk = b""
        if not chunk:
            self.closed = True
            return False
        self.buf += chunk
        return True

    def skip_line(self) -> None:
        """Drop buffered bytes up to and including the next newline, reading as needed."""
        while True:
            end = self.buf.find(b"\n")
            if end >= 0:
                del self.buf[: end + 1]
                self.scanned = 0
                return
            self.buf.clear()
            if not self.fill():
                return

    def notifications(self) -> Iterator[dict[str, Any]]:
        """Yield the hub's notifications (those read while awaiting replies first) until
        it closes the connection."""
        while self.notes:
            yield self.notes.pop(0)
        while True:
            msg = self.receive()
            if msg is None:
                return
            if msg.get("method") == "message":
                yield msg
