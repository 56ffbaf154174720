"""A fake fleet API: a real HTTP/1.1 server on 127.0.0.1 for the sync service's tests and
benchmarks, with failures, rate limits and slowness on demand.

    with FakeFleetAPI(token="t0k") as fake:
        fake.fail_next(2)                      # the next two POSTs answer 500
        ...                                    # point the sync service at fake.url
        assert fake.wait_for(lambda f: len(f.accepted()) == 1, timeout=5)

`POST /v1/agent/sync` takes a batch (`{"agent_id", "fleet_node_id", "dispatches": [...]}`,
an `Idempotency-Key` header) and answers 200; the same key POSTed again after a 2xx is
answered 200 again and recorded with `duplicate=True`, so a test counts what was delivered
by the distinct keys of `accepted()`. `GET /v1/agent/context?agent_id=...` answers what
`set_context` gave. With a `token`, a request without `Authorization: Bearer <token>` gets
401, whose body quotes the header it got, as a careless server might (a client must not
repeat it). Every request is recorded in `received`, in order, failed ones too (a delayed one
when it arrives, with the status it is going to get). Connections are kept alive; `stop()`
cuts them and wakes delayed answers, so it returns at once; the record and the accepted keys
survive a restart (`start()` again, on a new port). Standard library only, silent.
"""

from __future__ import annotations

import contextlib
import json
import socket
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qsl, urlsplit

__all__ = ["CONTEXT_PATH", "MAX_BODY", "SYNC_PATH", "FakeFleetAPI", "Received"]

SYNC_PATH = "/v1/agent/sync"
CONTEXT_PATH = "/v1/agent/context"
MAX_BODY = 64 * 1024 * 1024
"""Bytes of a request body read at most; a larger one is answered 413."""


@dataclass(frozen=True)
class Received:
    """One request: its method, path (without the query), the status it was answered, its
    Idempotency-Key and Authorization headers, its body (parsed JSON, or None), when it
    arrived (`time.monotonic()`), whether it repeated a key already accepted, its query and
    all its headers (names lower-cased)."""

    method: str
    path: str
    status: int
    idempotency_key: str | None
    authorization: str | None
    body: Any
    at: float
    duplicate: bool = False
    query: dict[str, str] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class _Answer:
    status: int
    body: Any
    headers: tuple[tuple[str, str], ...] = ()


class FakeFleetAPI:
    """Serves POST /v1/agent/sync and GET /v1/agent/context on 127.0.0.1:<random port>."""

    def __init__(self, *, token: str | None = None) -> None:
        self.token = token
        self.received: list[Received] = []
        self.connections = 0
        """TCP connections accepted so far (a client that reuses its connection opens one)."""
        self.errors: list[str] = []
        """What went wrong serving (a client that hung up mid-answer, ...), for debugging."""
        self._cond = threading.Condition()  # guards everything below; an RLock inside
        self._url: str | None = None
        self._keys: set[str] = set()
        self._next: deque[_Answer] = deque()
        self._always: int | None = None
        self._delay: float | None = None
        self._context: Any = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self._stopping = threading.Event()

    # -- lifecycle ---------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """`http://127.0.0.1:<port>` (kept after `stop()`, where nothing listens any more)."""
        if self._url is None:
            raise RuntimeError("FakeFleetAPI was never started")
        return self._url

    def start(self) -> Self:
        """Listen on a free port (no-op when running)."""
        if self._server is None:
            self._stopping = threading.Event()
            self._server = _Server(self)
            port = self._server.server_address[1]
            self._url = f"http://127.0.0.1:{port}"
            self._thread = threading.Thread(
                target=self._server.serve_forever,
                args=(0.05,),
                name=f"fake-fleet-api:{port}",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        """Stop listening, cut open connections, wake delayed answers, and wait for every
        serving thread to end."""
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None:
            return
        self._stopping.set()
        server.shutdown()
        server.cut_connections()
        server.server_close()  # joins the connection threads
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

    # -- behaviour ---------------------------------------------------------------------------
    def fail_next(self, n: int, status: int = 500) -> None:
        """The next `n` POSTs answer `status` (after anything queued before)."""
        with self._cond:
            answer = _Answer(status, {"error": f"injected failure: HTTP {status}"})
            self._next.extend([answer] * n)

    def always(self, status: int | None) -> None:
        """Every POST (once queued answers are used up) answers `status`; None: normal."""
        with self._cond:
            self._always = status

    def rate_limit_next(self, retry_after: str) -> None:
        """The next POST (after anything queued before) answers 429 with this Retry-After."""
        with self._cond:
            answer = _Answer(429, {"error": "rate limited"}, (("Retry-After", retry_after),))
            self._next.append(answer)

    def delay_next(self, seconds: float) -> None:
        """The next request (any) is answered after `seconds` (or at `stop()`)."""
        with self._cond:
            self._delay = seconds

    def set_context(self, body: Any) -> None:
        """What GET /v1/agent/context answers (200, JSON)."""
        with self._cond:
            self._context = body

    # -- the record --------------------------------------------------------------------------
    def accepted(self) -> list[Received]:
        """The POSTs to /v1/agent/sync answered 2xx (duplicates included, and marked)."""
        with self._cond:
            return [
                r
                for r in self.received
                if r.method == "POST" and r.path == SYNC_PATH and 200 <= r.status < 300
            ]

    def wait_for(self, predicate: Callable[[FakeFleetAPI], bool], timeout: float) -> bool:
        """Wait up to `timeout` seconds for `predicate(self)` (checked whenever a request is
        recorded); False on timeout."""
        with self._cond:
            return bool(self._cond.wait_for(lambda: predicate(self), timeout))

    # -- serving (called from the connection threads) -----------------------------------------
    def _error(self, message: str) -> None:
        with self._cond:
            self.errors.append(message)

    def _answer(self, method: str, target: str, headers: Any, raw: bytes) -> tuple[_Answer, float]:
        """Decide and record the answer to one request; the delay before sending it."""
        parts = urlsplit(target)
        query = dict(parse_qsl(parts.query))
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        key = headers.get("Idempotency-Key")
        auth = headers.get("Authorization")
        with self._cond:
            answer, duplicate = self._decide(method, parts.path, query, raw, body, key, auth)
            delay, self._delay = self._delay, None
            self.received.append(
                Received(
                    method=method,
                    path=parts.path,
                    status=answer.status,
                    idempotency_key=key,
                    authorization=auth,
                    body=body,
                    at=time.monotonic(),
                    duplicate=duplicate,
                    query=query,
                    headers={k.lower(): v for k, v in headers.items()},
                )
            )
            self._cond.notify_all()
        return answer, delay or 0.0

    def _decide(
        self,
        method: str,
        path: str,
        query: dict[str, str],
        raw: bytes,
        body: Any,
        key: str | None,
        auth: str | None,
    ) -> tuple[_Answer, bool]:
        routes = {SYNC_PATH: "POST", CONTEXT_PATH: "GET"}
        if path not in routes:
            return _Answer(404, {"error": f"no route {path}"}), False
        if routes[path] != method:
            return _Answer(405, {"error": f"{method} not allowed on {path}"}), False
        if self.token is not None and auth != f"Bearer {self.token}":
            return _Answer(401, {"error": "wrong bearer token", "got": auth}), False
        if method == "GET":
            if "agent_id" not in query:
                return _Answer(400, {"error": "agent_id is required"}), False
            return _Answer(200, self._context), False
        injected = self._next.popleft() if self._next else None
        if injected is None and self._always is not None:
            injected = _Answer(self._always, {"error": f"injected failure: HTTP {self._always}"})
        if injected is not None and not 200 <= injected.status < 300:
            return injected, False
        status = injected.status if injected is not None else 200
        if raw and body is None:
            return _Answer(400, {"error": "the body is not JSON"}), False
        if not (
            isinstance(body, dict)
            and isinstance(body.get("agent_id"), str)
            and isinstance(body.get("dispatches"), list)
        ):
            return _Answer(400, {"error": "expected {agent_id, fleet_node_id, dispatches}"}), False
        if not key:
            return _Answer(400, {"error": "the Idempotency-Key header is required"}), False
        duplicate = key in self._keys
        self._keys.add(key)
        return _Answer(status, {"accepted": len(body["dispatches"]), "duplicate": duplicate}), (
            duplicate
        )


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: clients reuse their connections
    timeout = 60  # an idle connection is closed after this many seconds
    disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms stall
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def _serve(self) -> None:
        fake = self.server.fake
        te = self.headers.get("Transfer-Encoding")
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if te or length < 0 or length > MAX_BODY:
            status = 411 if te else 400 if length < 0 else 413
            self.close_connection = True  # the body is not read: the connection is unusable
            self._send(_Answer(status, {"error": "request body refused"}))
            return
        raw = self.rfile.read(length) if length else b""
        if len(raw) < length:
            self.close_connection = True
            return  # the client hung up mid-body
        answer, delay = fake._answer(self.command, self.path, self.headers, raw)
        if delay > 0:
            fake._stopping.wait(delay)
        self._send(answer)

    def _send(self, answer: _Answer) -> None:
        payload = json.dumps(answer.body).encode()
        try:
            self.send_response(answer.status)
            for name, value in answer.headers:
                self.send_header(name, value)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(payload)))
            if self.close_connection:
                self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(payload)
            self.wfile.flush()
        except OSError as e:
            self.close_connection = True
            self.server.fake._error(f"answering {self.path}: {e!r}")


class _Server(ThreadingHTTPServer):
    """A threading server that knows its open connections, so `stop()` can cut them."""

    daemon_threads = True
    block_on_close = True

    def __init__(self, fake: FakeFleetAPI) -> None:
        self.fake = fake
        self._open: set[socket.socket] = set()
        self._open_lock = threading.Lock()
        super().__init__(("127.0.0.1", 0), _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        with self._open_lock:
            self._open.add(request)
        with self.fake._cond:
            self.fake.connections += 1
        super().process_request(request, client_address)

    def shutdown_request(self, request: Any) -> None:
        with self._open_lock:
            self._open.discard(request)
        super().shutdown_request(request)

    def cut_connections(self) -> None:
        with self._open_lock:
            open_now = list(self._open)
        for conn in open_now:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def handle_error(self, request: Any, client_address: Any) -> None:
        """Recorded, not printed: the fake is silent."""
        self.fake._error(f"{client_address}: {sys.exc_info()[1]!r}")
