"""The part every fake HTTP API shares: a server on 127.0.0.1 that records what it gets.

A subclass gives the request handler (`_handler`, building on `FakeHandler`) and records
each request it parses with `_record`; tests wait on the record with `wait_for`:

    with MyFake() as fake:
        ...  # point a client at fake.origin
        assert fake.wait_for(lambda r: r.path == "/ping", timeout=5) is not None

The server listens on a free port in a daemon thread between `start()` and `stop()` (or
as a context manager). Standard library only.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Generic, Self, TypeVar

__all__ = ["FakeAPI", "FakeHandler"]

R = TypeVar("R")


class FakeAPI(ABC, Generic[R]):
    """A local HTTP server recording requests of type `R` (`requests`, plus `errors` for
    what went wrong answering them); a context manager (or `start()` / `stop()`)."""

    name = "fake-http"
    """The server thread's name."""

    def __init__(self, *, host: str = "127.0.0.1") -> None:
        self.host = host
        self.requests: list[R] = []
        self.errors: list[str] = []
        self.started_at = 0.0
        self._cond = threading.Condition()
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @abstractmethod
    def _handler(self) -> type[BaseHTTPRequestHandler]:
        """The request handler class, answering for this fake."""

    # -- lifecycle ---------------------------------------------------------------------------
    def start(self) -> Self:
        """Listen on a free port (no-op when already running)."""
        if self._server is None:
            self._server = ThreadingHTTPServer((self.host, 0), self._handler())
            self._server.daemon_threads = True
            self._thread = threading.Thread(
                target=self._server.serve_forever, args=(0.05,), name=self.name, daemon=True
            )
            self.started_at = time.monotonic()
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop serving and close the socket."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is not None:
            server.shutdown()
            server.server_close()
        if thread is not None:
            thread.join()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def origin(self) -> str:
        """`http://HOST:PORT`; RuntimeError when the server is not running."""
        if self._server is None:
            raise RuntimeError(f"{self.name} is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    # -- the record --------------------------------------------------------------------------
    def _record(self, request: R) -> None:
        with self._cond:
            self.requests.append(request)
            self._cond.notify_all()

    def _error(self, message: str) -> None:
        with self._cond:
            self.errors.append(message)

    def wait_until(self, condition: Callable[[], object], timeout: float) -> bool:
        """Wait up to `timeout` seconds for `condition()` (checked under the record's lock
        whenever a request arrives) to be true; False on timeout."""
        with self._cond:
            return bool(self._cond.wait_for(condition, timeout))

    def wait_for(self, predicate: Callable[[R], object], timeout: float) -> R | None:
        """The first recorded request matching `predicate`, waiting up to `timeout` seconds
        for one to arrive; None when none did."""
        found: list[R] = []
        checked = 0

        def matched() -> bool:
            nonlocal checked
            for request in self.requests[checked:]:
                checked += 1
                if predicate(request):
                    found.append(request)
                    return True
            return False

        return found[0] if self.wait_until(matched, timeout) else None


class FakeHandler(BaseHTTPRequestHandler):
    """A quiet handler (the fake's record is the log) with body helpers."""

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def read_body(self) -> tuple[bytes, Any]:
        """The request body: its bytes, and its JSON (None when empty or not JSON)."""
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            return raw, json.loads(raw) if raw else None
        except ValueError:
            return raw, None

    def send_body(self, status: int, payload: bytes, content_type: str) -> None:
        """A complete response (no body for HEAD; a client that hung up is ignored)."""
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.command != "HEAD":
            with contextlib.suppress(ConnectionError):
                self.wfile.write(payload)

    def send_json(self, data: Any, status: int = 200) -> None:
        self.send_body(status, json.dumps(data).encode(), "application/json")
