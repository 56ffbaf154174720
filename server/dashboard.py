"""The web dashboard of `fleetbus serve --http`, on the same Starlette app and port as `/mcp`.

Routes: `GET /` (the page: lanes, queue, runs, channel events, a run's log tail),
`GET /login` and `POST /login` (the token, once, for a cookie), `POST /logout`,
`GET /static/{name}`, `GET /events` (server-sent events: a `status` snapshot of
`runner.status`, then every `runner.*` and `channel` message of the hub's bus, and a fresh
`status` after runner messages and after the dashboard's own actions), `GET /api/status`,
`GET /api/runs/{run_id}/log`, `POST /api/freeze`, `POST /api/unfreeze`, `POST /api/kill`.

Security, as for `/mcp`: the Host and Origin headers are checked against the same lists
(421, 403); every route needs the token, as `Authorization: Bearer` or as the login cookie
(an HMAC of the token, HttpOnly, SameSite=Strict), else 401; a POST with the cookie must
come from the dashboard's own origin (cookies are not scoped by port: another page on
127.0.0.1 is same-site). The token is never sent to the page, logged or put in a URL.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import hmac
import html
import json
import logging
import os
import stat
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path, PurePath
from typing import Any, Literal
from urllib.parse import parse_qs

import anyio
import anyio.to_thread
from anyio.streams.memory import MemoryObjectReceiveStream
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from fleetbus.bus.client import Client
from fleetbus.bus.errors import BusError, ConnectionFailed, InvalidInput, Refused, unwrap_group

log = logging.getLogger("fleetbus.dashboard")

TOPICS = ["runner.*", "channel"]  # what /events forwards
RUNS_SHOWN = 50  # newest runs in a status snapshot
LOG_TAIL_BYTES = 64 * 1024
BODY_LIMIT = 16 * 1024  # bytes of a POST body read
KEEPALIVE = 15.0  # seconds between SSE comments (a gone browser is noticed)
REFRESH_DELAY = 0.2  # a burst of runner messages gives one fresh status
HUB_WAIT = 10.0  # seconds a request waits for the hub connection
SUBSCRIBE_BUFFER = 4096
STATIC = {
    "app.css": "text/css; charset=utf-8",
    "app.js": "text/javascript; charset=utf-8",
}
COMMON_HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # "no-referrer" makes Chromium send Origin: null
}
PAGE_CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
    "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
LOGIN_STYLE = """
body{font:15px/1.4 system-ui,sans-serif;background:#f4f5f7;color:#1d2430;margin:0}
main{max-width:24rem;margin:12vh auto;background:#fff;padding:1.5rem 2rem;border-radius:8px;
box-shadow:0 1px 4px #0002}
h1{font-size:1.3rem;margin:0 0 .5rem}
label{display:block;margin:1rem 0 .3rem}
input{width:100%;box-sizing:border-box;padding:.5rem;font:inherit}
button{margin-top:1rem;padding:.5rem 1.2rem;font:inherit;cursor:pointer}
.problem{color:#a11;background:#fdecec;padding:.5rem;border-radius:4px}
code{background:#eef;padding:0 .2rem}
"""
LOGIN_CSP = (
    "default-src 'none'; style-src 'sha256-"
    + base64.b64encode(hashlib.sha256(LOGIN_STYLE.encode()).digest()).decode()
    + "'; img-src data:; form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
)
COOKIE_LABEL = b"fleetbus dashboard login v1"
NO_LOGIN = "log in first (/login), or send the token as Authorization: Bearer"
ANY = ["GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"]  # answered by the guard

Auth = Literal["bearer", "cookie"]
Handler = Callable[[Request], Awaitable[Response]]


def matches(value: str, allowed: Sequence[str]) -> bool:
    """`value` is in `allowed`, where `base:*` allows `base` with any port (as the MCP SDK's
    transport security matches Host and Origin)."""
    return any(value == a or (a.endswith(":*") and value.startswith(a[:-1])) for a in allowed)


def number(text: str) -> int | None:
    """`text` as a non-negative whole number of at most 18 ASCII digits, else None."""
    return int(text) if text.isascii() and text.isdigit() and len(text) <= 18 else None


def json_error(status: int, message: str, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(
        {"error": message}, status_code=status, headers={**COMMON_HEADERS, **(headers or {})}
    )


def login_page(message: str = "", status: int = 200) -> HTMLResponse:
    """The login form; `message` says why it is shown (escaped)."""
    problem = f'<p class="problem" role="alert">{html.escape(message)}</p>' if message else ""
    body = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="icon" href="data:,">
<title>fleetbus: log in</title><style>{LOGIN_STYLE}</style></head>
<body><main>
<h1>fleetbus dashboard</h1>
{problem}
<form method="post" action="/login">
<input name="user" autocomplete="username" value="fleetbus" hidden>
<label for="token">Token (<code>$FLEETBUS_HOME/token</code> or <code>FLEETBUS_TOKEN</code>)</label>
<input id="token" name="token" type="password" autocomplete="current-password" required autofocus>
<button type="submit">Log in</button>
</form>
</main></body></html>
"""
    return HTMLResponse(
        body,
        status_code=status,
        headers={**COMMON_HEADERS, "Content-Security-Policy": LOGIN_CSP},
    )


def sse(event: str, data: Any, event_id: int | None = None) -> bytes:
    """One server-sent event; its JSON data is one line (json.dumps escapes newlines)."""
    head = f"event: {event}\n" + (f"id: {event_id}\n" if event_id is not None else "")
    return (head + "data: " + json.dumps(data, default=str) + "\n\n").encode()


def bus_error_status(e: BusError) -> int:
    if isinstance(e, ConnectionFailed):
        return 503
    if isinstance(e, InvalidInput):
        return 400
    if isinstance(e, Refused):
        return 409
    return 502


# -- the log tail ---------------------------------------------------------------------------
@dataclass
class LogTail:
    text: str = ""
    size: int = 0  # bytes in the file
    truncated: bool = False  # only its end is in `text`
    problem: str = ""  # why nothing was read


def read_tail(runs_dir: Path, log_path: str | None, limit: int = LOG_TAIL_BYTES) -> LogTail:
    """The last `limit` bytes of a run's log under `runs_dir`, opened one component at a
    time without following a symbolic link (an agent can reach its run directory), and
    read only if it is a regular file (a FIFO must not hang the server)."""
    if not log_path:
        return LogTail(problem="this run has no log yet")
    rel: PurePath | None = None
    for base in (runs_dir, Path(os.path.realpath(runs_dir))):
        with contextlib.suppress(ValueError):
            rel = PurePath(log_path).relative_to(base)
            break
    if rel is None or not rel.parts or any(p in ("", ".", "..") for p in rel.parts):
        return LogTail(problem="the run's log is not in the home's runs directory: not read")
    dir_flags = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC
    try:
        fd = os.open(runs_dir, dir_flags)
    except FileNotFoundError:
        return LogTail(problem="this run has no log yet")
    try:
        for part in rel.parts[:-1]:
            inner = os.open(part, dir_flags | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = inner
        file_fd = os.open(
            rel.parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC, dir_fd=fd
        )
    except FileNotFoundError:
        return LogTail(problem="this run has no log yet")
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            return LogTail(problem="the run's log path holds a symbolic link: not followed")
        return LogTail(problem=f"cannot read the run's log: {e.strerror or e}")
    finally:
        os.close(fd)
    with open(file_fd, "rb") as f:
        st = os.fstat(file_fd)
        if not stat.S_ISREG(st.st_mode):
            return LogTail(problem="the run's log is not a regular file: not read")
        start = max(0, st.st_size - limit)
        try:
            f.seek(start)
            data = f.read(limit)
        except OSError as e:
            return LogTail(problem=f"cannot read the run's log: {e.strerror or e}")
    return LogTail(data.decode(errors="replace"), st.st_size, start > 0)


# -- the dashboard --------------------------------------------------------------------------
class Dashboard:
    """The dashboard's routes, bound to a hub client getter and the server's token."""

    def __init__(
        self,
        get_client: Callable[[], Awaitable[Client]],
        token: str,
        *,
        hosts: Sequence[str],
        origins: Sequence[str],
        port: int,
        runs_dir: Path,
    ) -> None:
        self.get_client = get_client
        self._token = token.encode()
        self._cookie_value = hmac.new(self._token, COOKIE_LABEL, hashlib.sha256).hexdigest()
        self.cookie_name = f"fleetbus_dashboard_{port}"  # cookies are shared across ports
        self.hosts = list(hosts)
        self.origins = list(origins)
        self.runs_dir = runs_dir
        self.pokes: set[Callable[[], None]] = set()  # open event streams: "send a status"
        self.closing = anyio.Event()
        package = resources.files(__package__ or "fleetbus.server").joinpath("static")
        self.index = package.joinpath("index.html").read_bytes()
        self.static = {name: package.joinpath(name).read_bytes() for name in STATIC}

    def routes(self) -> list[Route]:
        view, get, post = {"GET", "HEAD"}, {"GET"}, {"POST"}
        return [
            Route("/", self.guard(self.page, view, page=True), methods=ANY),
            Route("/login", self.login, methods=ANY),
            Route("/logout", self.guard(self.logout, post, page=True), methods=ANY),
            Route("/static/{name}", self.guard(self.asset, view, page=True), methods=ANY),
            Route("/events", self.guard(self.events, get), methods=ANY),
            Route("/api/status", self.guard(self.status, get), methods=ANY),
            Route("/api/runs/{run_id}/log", self.guard(self.run_log, get), methods=ANY),
            Route("/api/freeze", self.guard(self.freeze, post), methods=ANY),
            Route("/api/unfreeze", self.guard(self.unfreeze, post), methods=ANY),
            Route("/api/kill", self.guard(self.kill, post), methods=ANY),
        ]

    def close(self) -> None:
        """End the open event streams (the server is stopping)."""
        self.closing.set()

    # -- checks ------------------------------------------------------------------------------
    def check_headers(self, request: Request) -> Response | None:
        """The refusal of a Host or Origin header (the MCP endpoint's rules), or None."""
        host = request.headers.get("host", "")
        if not matches(host, self.hosts):
            return json_error(
                421, f"refused: the Host header {host!r} is not one this server answers to"
            )
        origin = request.headers.get("origin")
        if origin is not None and not matches(origin, self.origins):
            return json_error(403, f"refused: requests from the origin {origin!r} are not allowed")
        return None

    def same_origin(self, request: Request) -> bool:
        """The request comes from a page of this server (Origin, else Sec-Fetch-Site)."""
        host = request.headers.get("host", "")
        origin = request.headers.get("origin")
        if origin is not None:
            return origin in (f"http://{host}", f"https://{host}")
        return request.headers.get("sec-fetch-site") == "same-origin"

    def token_ok(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self._token)

    def authenticate(self, request: Request) -> Auth | str:
        """How the request holds the token ("bearer", "cookie"), else why it does not."""
        header = request.headers.get("authorization")
        if header is not None:
            scheme, _, value = header.strip().partition(" ")
            if scheme.lower() == "bearer" and self.token_ok(value.strip()):
                return "bearer"
            return "the Authorization header does not hold this server's bearer token"
        cookie = request.cookies.get(self.cookie_name)
        if cookie is not None:
            if hmac.compare_digest(cookie.encode(), self._cookie_value.encode()):
                return "cookie"
            return "the login is no longer valid (the token changed): log in again"
        return NO_LOGIN

    def guard(self, handler: Handler, methods: set[str], *, page: bool = False) -> Handler:
        """`handler` behind the checks: Host and Origin, the token, the method, and for a
        POST with the cookie, the same origin."""

        async def endpoint(request: Request) -> Response:
            refusal = self.check_headers(request)
            if refusal is not None:
                return refusal
            auth = self.authenticate(request)
            if auth not in ("bearer", "cookie"):
                if page and request.method in ("GET", "HEAD"):
                    return login_page("" if auth == NO_LOGIN else auth, status=401)
                return json_error(401, f"unauthorized: {auth}", {"WWW-Authenticate": "Bearer"})
            if request.method not in methods:
                allow = ", ".join(sorted(methods))
                return json_error(
                    405, f"refused: {request.url.path} takes {allow} only", {"Allow": allow}
                )
            if request.method == "POST" and auth == "cookie" and not self.same_origin(request):
                return json_error(
                    403,
                    "refused: a POST with the login cookie must come from the dashboard's own "
                    "page (same origin); scripts send Authorization: Bearer instead",
                )
            try:
                return await handler(request)
            except BusError as e:
                return json_error(bus_error_status(e), e.message)

        return endpoint

    async def client(self) -> Client:
        try:
            with anyio.fail_after(HUB_WAIT):
                return await self.get_client()
        except TimeoutError:
            raise ConnectionFailed(f"the hub did not answer within {HUB_WAIT:g}s") from None

    def poke_all(self) -> None:
        for poke in list(self.pokes):
            poke()

    # -- pages -------------------------------------------------------------------------------
    async def login(self, request: Request) -> Response:
        """GET: the form; POST: check the token (constant time), set the cookie, go to /."""
        refusal = self.check_headers(request)
        if refusal is not None:
            return refusal
        if request.method in ("GET", "HEAD"):
            return login_page()
        if request.method != "POST":
            return json_error(405, "refused: /login takes GET or POST", {"Allow": "GET, POST"})
        if request.headers.get("origin") is not None and not self.same_origin(request):
            return login_page("refused: log in from this server's own login page", 403)
        body = await read_body(request)
        if body is None:
            return login_page("refused: the form was too large", 413)
        given = parse_qs(body.decode(errors="replace")).get("token", [""])[0].strip()
        if not given or not self.token_ok(given):
            log.warning("dashboard: a login with a wrong token was refused")
            return login_page("That is not this server's token.", 401)
        response = Response(status_code=303, headers={**COMMON_HEADERS, "Location": "/"})
        response.set_cookie(
            self.cookie_name, self._cookie_value, path="/", httponly=True, samesite="strict"
        )
        return response

    async def logout(self, request: Request) -> Response:
        response = Response(status_code=303, headers={**COMMON_HEADERS, "Location": "/login"})
        response.delete_cookie(self.cookie_name, path="/", httponly=True, samesite="strict")
        return response

    async def page(self, request: Request) -> Response:
        return HTMLResponse(
            self.index, headers={**COMMON_HEADERS, "Content-Security-Policy": PAGE_CSP}
        )

    async def asset(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in self.static:
            return json_error(404, f"no static file {name!r}")
        return Response(self.static[name], media_type=STATIC[name], headers=COMMON_HEADERS)

    # -- the API -----------------------------------------------------------------------------
    async def status(self, request: Request) -> Response:
        limit = number(request.query_params.get("limit", str(RUNS_SHOWN)))
        if limit is None or limit > 1000:
            return json_error(400, "limit must be a whole number from 0 to 1000")
        client = await self.client()
        result = await client.perform("runner.status", {"limit": limit})
        return JSONResponse(result, headers=COMMON_HEADERS)

    async def run_log(self, request: Request) -> Response:
        run_id = request.path_params["run_id"]
        client = await self.client()
        result = await client.perform("runner.status", {"run_id": run_id, "limit": 1})
        if not result["runs"]:
            return json_error(404, f"no run {run_id!r}")
        run = result["runs"][0]
        tail = await anyio.to_thread.run_sync(read_tail, self.runs_dir, run.get("log"))
        return JSONResponse(
            {
                "run_id": run_id,
                "status": run["status"],
                "log": tail.text,
                "size": tail.size,
                "truncated": tail.truncated,
                "problem": tail.problem,
            },
            headers=COMMON_HEADERS,
        )

    async def control(self, action: str, payload: dict[str, Any] | None = None) -> Response:
        client = await self.client()
        result = await client.perform(action, payload)
        log.info("dashboard: %s%s", action, f" {payload}" if payload else "")
        self.poke_all()
        return JSONResponse(result, headers=COMMON_HEADERS)

    async def freeze(self, request: Request) -> Response:
        return await self.control("runner.stop")

    async def unfreeze(self, request: Request) -> Response:
        return await self.control("runner.start")

    async def kill(self, request: Request) -> Response:
        if not request.headers.get("content-type", "").startswith("application/json"):
            return json_error(415, 'send JSON: Content-Type: application/json, {"run_id": ...}')
        body = await read_body(request)
        if body is None:
            return json_error(413, f"the request body is larger than {BODY_LIMIT} bytes")
        try:
            data = json.loads(body)
        except ValueError:
            return json_error(400, 'the body is not JSON: send {"run_id": ...}')
        run_id = data.get("run_id") if isinstance(data, dict) else None
        if not isinstance(run_id, str) or not run_id.strip():
            return json_error(400, 'name the run to kill: {"run_id": ...}')
        return await self.control("runner.kill", {"run_id": run_id})

    async def events(self, request: Request) -> Response:
        since = number(request.headers.get("last-event-id", ""))
        return EventStream(self, await self.client(), since)


async def read_body(request: Request, limit: int = BODY_LIMIT) -> bytes | None:
    """The request's body, or None when it is larger than `limit` bytes."""
    declared = number(request.headers.get("content-length", ""))
    if declared is not None and declared > limit:
        return None
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            return None
    return bytes(body)


class EventStream(Response):
    """`/events`: one hub subscription for as long as the browser stays connected."""

    def __init__(self, dashboard: Dashboard, client: Client, since: int | None) -> None:
        self.status_code = 200
        self.media_type = "text/event-stream"
        self.background = None
        self.init_headers({**COMMON_HEADERS, "X-Accel-Buffering": "no"})  # no Content-Length
        self.dashboard = dashboard
        self.client = client
        self.since = since
        self._lock = anyio.Lock()
        self._send: Send | None = None

    async def emit(self, chunk: bytes) -> None:
        assert self._send is not None
        async with self._lock:
            await self._send({"type": "http.response.body", "body": chunk, "more_body": True})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        self._send = send
        await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
        with contextlib.suppress(OSError), unwrap_group():
            async with anyio.create_task_group() as tg:
                tg.start_soon(self._until_gone, receive, tg.cancel_scope)
                tg.start_soon(self._keepalive)
                await self.emit(b"retry: 2000\n\n")
                try:
                    await self._pump()
                except BusError as e:  # the hub went away: the browser reconnects
                    await self.emit(sse("problem", {"error": e.message}))
                tg.cancel_scope.cancel()
            with anyio.CancelScope(shield=True), anyio.move_on_after(1):
                await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def _until_gone(self, receive: Receive, scope: anyio.CancelScope) -> None:
        """Cancel the stream when the browser disconnects or the server stops."""
        async with anyio.create_task_group() as tg:

            async def closing() -> None:
                await self.dashboard.closing.wait()
                tg.cancel_scope.cancel()

            tg.start_soon(closing)
            while (await receive())["type"] != "http.disconnect":
                pass
            tg.cancel_scope.cancel()
        scope.cancel()

    async def _keepalive(self) -> None:
        while True:
            await anyio.sleep(KEEPALIVE)
            await self.emit(b": keepalive\n\n")

    async def _pump(self) -> None:
        """The snapshot, then each message; a fresh status after runner messages."""
        wanted_send, wanted = anyio.create_memory_object_stream[None](1)

        def want() -> None:
            with contextlib.suppress(anyio.WouldBlock, anyio.BrokenResourceError):
                wanted_send.send_nowait(None)

        async with (
            self.client.subscribe(TOPICS, since=self.since, buffer=SUBSCRIBE_BUFFER) as messages,
            wanted_send,
            wanted,
        ):
            await self.emit(sse("status", await self._status()))
            self.dashboard.pokes.add(want)
            try:
                with unwrap_group():  # a lost hub: ConnectionFailed, not a group
                    async with anyio.create_task_group() as tg:
                        tg.start_soon(self._refresh, wanted)
                        async for envelope in messages:
                            topic = str(envelope.get("topic", ""))
                            item = {k: envelope.get(k) for k in ("seq", "topic", "ts", "data")}
                            await self.emit(sse("bus", item, envelope.get("seq")))
                            if topic.startswith("runner."):
                                want()
                        tg.cancel_scope.cancel()
            finally:
                self.dashboard.pokes.discard(want)
        raise ConnectionFailed("the connection to the hub closed")

    async def _refresh(self, wanted: MemoryObjectReceiveStream[None]) -> None:
        async for _ in wanted:
            await anyio.sleep(REFRESH_DELAY)  # let the rest of a burst arrive
            with contextlib.suppress(anyio.WouldBlock):
                wanted.receive_nowait()
            try:
                status = await self._status()
            except BusError as e:
                if isinstance(e, ConnectionFailed):
                    raise
                log.warning("dashboard: runner.status failed: %s", e.message)
                continue
            await self.emit(sse("status", status))

    async def _status(self) -> Any:
        return await self.client.perform("runner.status", {"limit": RUNS_SHOWN})
