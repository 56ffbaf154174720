"""`fleetbus serve` over stdio: a relay between the client's pipe and an MCP session in the hub.

Stdlib only, so it answers within a client's grace period (Codex CLI sends its first model
request about 1 s after starting its MCP servers; importing the MCP SDK alone takes
longer). The hub, which has the SDK loaded, serves the session (`mcp_host.py`); the relay

- answers the handshake itself (`handshake.py`): `server/discover` is refused so clients
  fall back to `initialize`, which is answered at once and then replayed to the hub;
- forwards every other line both ways once the hub's session is open, holding the
  client's lines meanwhile; until then it answers `tools/list` from the list the hub last
  published in the home (`mcp-tools.json`), or in a home never used from the built-in
  plugins' list shipped with the package (`default-tools.json`), and once the session is
  open sends `notifications/tools/list_changed` if the live list differs;
- starts a hub when none runs, and after losing one answers the requests the lost hub
  owed with a clear error, starts a new hub and reopens the session there (the client
  keeps its connection);
- on end of input, waits for the answers still owed, then exits.
"""

from __future__ import annotations

import json
import os
import selectors
import socket
import sys
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from fleetbus.bus.hubstart import ensure_hub_blocking
from fleetbus.bus.jsoncheck import Rejected, check_json
from fleetbus.bus.paths import Home
from fleetbus.bus.wire import MAX_LINE, guess_id

from . import handshake as hs

TOOLS_CACHE = "mcp-tools.json"
# the built-in plugins' tools, shipped with the package (python -m fleetbus.server.tools)
DEFAULT_TOOLS = Path(__file__).resolve().with_name("default-tools.json")
OPEN_METHOD = "mcp.open"
OWN = "fleetbus-relay:"  # ids of the relay's own requests to the hub
TOO_LARGE = (
    f"request larger than {MAX_LINE // (1024 * 1024)} MiB (the limit of one message): dropped"
)
RETRY_S = 1.0
HUB_BUFFER = 1 << 20  # bytes waiting for the hub past which the client is not read
INTERNAL_ERROR = -32603


def tools_cache(home: Home) -> Path:
    return home.root / TOOLS_CACHE


def read_tools(path: Path) -> list[Any] | None:
    try:
        with open(path, "rb") as f:
            tools = json.loads(f.read(MAX_LINE))["tools"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return tools if isinstance(tools, list) else None


def read_tools_cache(home: Home) -> list[Any] | None:
    """The tools the home's hub last published, else those of the built-in plugins (in a
    home never used: the live list follows with list_changed if it differs)."""
    return read_tools(tools_cache(home)) or read_tools(DEFAULT_TOOLS)


def without_nulls(value: Any) -> Any:
    """JSON with null members dropped: two dumps of one tool list compare equal."""
    if isinstance(value, dict):
        return {k: without_nulls(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [without_nulls(v) for v in value]
    return value


def encode(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


class Lines:
    """Splits a byte stream into lines; a line longer than MAX_LINE is skipped, and its
    first bytes (where the request's id usually is) kept in `too_long` to answer it."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.skipping = False
        self.too_long: list[bytes] = []

    def feed(self, data: bytes) -> list[bytes]:
        self.buf += data
        out: list[bytes] = []
        while True:
            end = self.buf.find(b"\n")
            if end < 0 and len(self.buf) <= MAX_LINE:
                return out
            if end < 0 or end > MAX_LINE:
                if not self.skipping:
                    self.too_long.append(bytes(self.buf[:4096]))
                    self.skipping = True
                if end < 0:
                    self.buf.clear()
                    return out
            line = bytes(self.buf[:end])
            del self.buf[: end + 1]
            if self.skipping:
                self.skipping = False
                continue
            if line.strip():
                out.append(line)


class Relay:
    """One client connection on `stdin`/`stdout`, relayed to an MCP session in the hub."""

    def __init__(
        self,
        home: Home,
        env: Mapping[str, str],
        *,
        stdin: int = 0,
        stdout: int = 1,
        socket_path: Path | None = None,
    ) -> None:
        self.home = home
        self.env = env
        self.stdin = stdin
        self.stdout = stdout
        self.socket_path = socket_path  # a hub run in this process (--embedded)
        self.raw = hs.discover_mode(env) == "answer"
        self.init_params: dict[str, Any] | None = None
        self.protocol = ""
        self.initialized = False  # the client sent notifications/initialized
        self.sock: socket.socket | None = None
        self.hub_out = bytearray()  # written to the hub as its socket takes it
        self.stdin_paused = False
        self.state = "down"  # down | starting | opening | open | failed
        self.failure = ""
        self.held: list[tuple[bytes, Any, str]] = []  # (line, request id, method) for the session
        self.owed: set[Any] = set()  # ids of client requests the hub has not answered
        self.served_tools: list[Any] | None = None  # tools/list answered from the cache
        self.client_lines = Lines()
        self.hub_lines = Lines()
        self.eof = False
        self.sel = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe()
        self.started: tuple[str, str] | None = None  # (ok | error, detail) from the starter
        self.retry_at: float | None = None

    # -- the loop ----------------------------------------------------------------------------
    def run(self) -> int:
        self.sel.register(self.stdin, selectors.EVENT_READ, self.on_stdin)
        self.sel.register(self.wake_r, selectors.EVENT_READ, self.on_wake)
        self.connect()
        try:
            while not self.done():
                timeout = None
                if self.retry_at is not None:
                    timeout = max(0.0, self.retry_at - _now())
                for key, _ in self.sel.select(timeout):
                    key.data()
                if self.retry_at is not None and _now() >= self.retry_at:
                    self.retry_at = None
                    self.connect()
        except BrokenPipeError:  # the client went away
            return 0
        finally:
            if self.sock is not None:
                self.sock.close()
            os.close(self.wake_r)
            os.close(self.wake_w)
        return 0

    def done(self) -> bool:
        if not self.eof:
            return False
        if self.state == "failed":
            return True
        return not self.owed and all(req_id is None for _, req_id, _ in self.held)

    # -- the hub side ------------------------------------------------------------------------
    def connect(self) -> None:
        """Connect to the running hub, or start one in a thread (it wakes us when ready)."""
        path = self.socket_path or self.home.socket
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(os.fspath(path))
        except OSError:
            sock.close()
            if self.socket_path is not None:
                self.fail_hub(f"cannot connect to the hub at {path}")
                return
            self.state = "starting"
            threading.Thread(target=self.start_hub, daemon=True, name="fleetbus-start").start()
            return
        sock.setblocking(False)  # never block on the hub: it may be waiting for us to read
        self.sock = sock
        self.hub_out.clear()
        self.sel.register(sock, selectors.EVENT_READ, self.on_hub)
        self.state = "connected"
        self.answer_held_tools()
        self.open_session()

    def answer_held_tools(self) -> None:
        """A hub that listens has published its tools: answer the tools/list held so far."""
        if not any(method == "tools/list" for _, _, method in self.held):
            return
        held, self.held = self.held, []
        for line, req_id, method in held:
            if not (method == "tools/list" and req_id is not None and self.answer_tools(req_id)):
                self.held.append((line, req_id, method))

    def start_hub(self) -> None:  # in a thread
        try:
            ensure_hub_blocking(self.home, self.env)
            self.started = ("ok", "")
        except Exception as e:
            self.started = ("error", getattr(e, "message", None) or str(e))
        os.write(self.wake_w, b"x")

    def on_wake(self) -> None:
        os.read(self.wake_r, 64)
        started, self.started = self.started, None
        if started is None:
            return
        if started[0] == "ok":
            self.connect()
        else:
            log(f"cannot start the hub: {started[1]}; retrying")
            self.answer_held(f"fleetbus cannot start its hub: {started[1]}")
            self.state = "down"
            self.retry_at = _now() + RETRY_S

    def open_session(self) -> None:
        """Ask the hub for an MCP session once we know how the client initialized."""
        if self.state != "connected" or (self.init_params is None and not self.raw):
            return
        params = {
            "initialize": self.init_params,
            "initialized": self.initialized,
            "raw": self.raw,
        }
        self.state = "opening"
        self.send_hub(
            encode({"jsonrpc": "2.0", "id": OWN + "open", "method": OPEN_METHOD, "params": params})
        )

    def on_hub(self) -> None:
        assert self.sock is not None
        if self.hub_out and not self.flush_hub():
            return
        try:
            data = self.sock.recv(1 << 16)
        except BlockingIOError:  # it was ready for writing only
            return
        except OSError:
            data = b""
        if not data:
            self.lost_hub()
            return
        for line in self.hub_lines.feed(data):
            self.from_hub(line)

    def from_hub(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
        except ValueError:
            log("the hub sent a line that is not JSON; ignored")
            return
        if not isinstance(msg, dict):
            return
        msg_id = msg.get("id")
        if isinstance(msg_id, str) and msg_id.startswith(OWN):
            self.own_reply(msg_id.removeprefix(OWN), msg)
            return
        if msg_id is not None and ("result" in msg or "error" in msg):
            self.owed.discard(_key(msg_id))
        self.write_client(line + b"\n")

    def own_reply(self, what: str, msg: dict[str, Any]) -> None:
        if what == "open":
            if "error" in msg:
                error = msg["error"] if isinstance(msg["error"], dict) else {}
                if error.get("code") == hs.METHOD_NOT_FOUND:
                    self.fail_hub(
                        "this hub does not serve MCP sessions: its plugin mcp_host is disabled "
                        "(FLEETBUS_PLUGINS / FLEETBUS_DISABLE_PLUGINS); enable it, then restart "
                        "the hub with `fleetbus stop`"
                    )
                else:
                    self.fail_hub(str(error.get("message", "the hub refused the MCP session")))
                return
            self.state = "open"
            held, self.held = self.held, []
            for line, req_id, method in held:
                self.forward(line, req_id, method)
            if self.served_tools is not None:
                self.send_hub(
                    encode({"jsonrpc": "2.0", "id": OWN + "tools", "method": "tools/list"})
                )
        elif what == "tools":
            tools = (msg.get("result") or {}).get("tools")
            if self.served_tools is not None and without_nulls(tools) != without_nulls(
                self.served_tools
            ):
                self.write_client(
                    encode({"jsonrpc": "2.0", "method": "notifications/tools/list_changed"})
                )
            self.served_tools = None

    def lost_hub(self) -> None:
        if self.sock is not None:
            self.sel.unregister(self.sock)
            self.sock.close()
            self.sock = None
        self.hub_out.clear()
        if self.stdin_paused and not self.eof:
            self.stdin_paused = False
            self.sel.register(self.stdin, selectors.EVENT_READ, self.on_stdin)
        for req_id in sorted(self.owed, key=str):
            self.write_client(
                encode(
                    hs.error(
                        _unkey(req_id),
                        INTERNAL_ERROR,
                        "fleetbus's hub stopped while serving this request; a new hub is "
                        "starting: try again (runs go on; runner_status shows them)",
                    )
                )
            )
        self.owed.clear()
        if self.state == "failed":
            return
        log("lost the hub; starting a new one")
        self.state = "down"
        self.connect()

    def fail_hub(self, reason: str) -> None:
        """The hub will not serve this session: every request gets `reason` from now on."""
        log(reason)
        self.failure = reason
        self.state = "failed"
        self.answer_held(reason)

    def answer_held(self, reason: str) -> None:
        held, self.held = self.held, []
        for _, req_id, _ in held:
            if req_id is not None:
                self.reply(req_id, INTERNAL_ERROR, reason)

    def send_hub(self, data: bytes) -> None:
        assert self.sock is not None
        self.hub_out += data
        self.flush_hub()

    def flush_hub(self) -> bool:
        """Write what the hub's socket takes now; the rest when it is writable again. While
        more than HUB_BUFFER bytes wait, the client's input is not read (back-pressure:
        the hub reads a session's requests only as fast as it answers them). False when
        the hub is lost."""
        assert self.sock is not None
        try:
            while self.hub_out:
                sent = self.sock.send(self.hub_out)
                del self.hub_out[:sent]
        except BlockingIOError:
            pass
        except OSError:
            self.lost_hub()
            return False
        events = selectors.EVENT_READ | (selectors.EVENT_WRITE if self.hub_out else 0)
        self.sel.modify(self.sock, events, self.on_hub)
        pause = len(self.hub_out) > HUB_BUFFER
        if pause != self.stdin_paused and not self.eof:
            self.stdin_paused = pause
            if pause:
                self.sel.unregister(self.stdin)
            else:
                self.sel.register(self.stdin, selectors.EVENT_READ, self.on_stdin)
        return True

    # -- the client side ---------------------------------------------------------------------
    def on_stdin(self) -> None:
        try:
            data = os.read(self.stdin, 1 << 16)
        except OSError:
            data = b""
        if not data:
            self.eof = True
            self.sel.unregister(self.stdin)
            return
        for line in self.client_lines.feed(data):
            self.from_client(line)
        while self.client_lines.too_long:
            head = self.client_lines.too_long.pop(0)
            self.reply(guess_id(head), hs.INVALID_REQUEST, TOO_LARGE)

    def from_client(self, line: bytes) -> None:
        try:
            msg = json.loads(line)
        except ValueError as e:
            self.reply(None, hs.PARSE_ERROR, f"not JSON: {e}")
            return
        if not isinstance(msg, dict) or not isinstance(msg.get("method", ""), str):
            self.reply(
                None, hs.INVALID_REQUEST, "a message is a JSON-RPC object (batches are not served)"
            )
            return
        try:
            check_json(msg, "message")
        except Rejected as e:
            self.reply(msg.get("id") if "method" in msg else None, hs.INVALID_PARAMS, str(e))
            return
        method = msg.get("method")
        if method is None:  # the client's answer to a request of the server's
            self.forward(line, None, "")
            return
        req_id = msg.get("id")
        is_request = "id" in msg
        if self.raw:
            self.forward(line, req_id if is_request else None, method)
            return
        if method == "server/discover":
            if self.init_params is None:
                self.write_client(encode(hs.discover_refused(req_id)))
            else:
                self.reply(
                    req_id,
                    hs.INVALID_REQUEST,
                    f"server/discover after initialize: this connection already serves MCP {self.protocol}",
                )
            return
        if method == "initialize":
            self.initialize(req_id, msg.get("params"), is_request)
            return
        if self.init_params is None:
            if method == "ping" and is_request:
                self.write_client(encode({"jsonrpc": "2.0", "id": req_id, "result": {}}))
            elif is_request:
                self.reply(
                    req_id, hs.INVALID_REQUEST, f"{method} before initialize: send initialize first"
                )
            else:
                self.reply(
                    None,
                    hs.INVALID_REQUEST,
                    f"notification {method} before initialize: ignored; send initialize first",
                )
            return
        if method == "notifications/initialized":
            self.initialized = True
        elif method == "notifications/cancelled" and isinstance(msg.get("params"), dict):
            # a cancelled request is never answered: nothing is owed for it any more
            self.owed.discard(_key(msg["params"].get("requestId")))
        elif method == "tools/list" and self.state != "open" and self.answer_tools(req_id):
            return
        self.forward(line, req_id if is_request else None, method)

    def initialize(self, req_id: Any, params: Any, is_request: bool) -> None:
        if not is_request:
            self.reply(None, hs.INVALID_REQUEST, "initialize is a request: give it an id")
            return
        if self.init_params is not None:
            self.reply(
                req_id,
                hs.INVALID_REQUEST,
                f"initialize was already sent on this connection (it serves MCP {self.protocol})",
            )
            return
        try:
            self.protocol = hs.negotiate(params)
        except hs.HandshakeError as e:
            self.reply(req_id, e.code, e.message)
            return
        assert isinstance(params, dict)
        self.init_params = {**params, "protocolVersion": self.protocol}
        result = hs.initialize_result(params, self.protocol)
        self.write_client(encode({"jsonrpc": "2.0", "id": req_id, "result": result}))
        self.open_session()

    def answer_tools(self, req_id: Any) -> bool:
        """Answer tools/list from the hub's last published list while the hub starts."""
        tools = read_tools_cache(self.home)
        if tools is None:
            return False
        self.served_tools = tools
        self.write_client(encode({"jsonrpc": "2.0", "id": req_id, "result": {"tools": tools}}))
        return True

    def forward(self, line: bytes, req_id: Any, method: str) -> None:
        """Send a client line to the hub's session (held until it opens); `req_id` is the
        id of a request (None for notifications and responses)."""
        if self.state == "failed":
            if req_id is not None:
                self.reply(req_id, INTERNAL_ERROR, self.failure)
            return
        if self.state != "open":
            self.held.append((line, req_id, method))
            return
        if req_id is not None:
            self.owed.add(_key(req_id))
        self.send_hub(line + b"\n")

    def reply(self, req_id: Any, code: int, message: str) -> None:
        self.write_client(encode(hs.error(req_id, code, message)))

    def write_client(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            n = os.write(self.stdout, view)
            view = view[n:]


def _key(req_id: Any) -> Any:
    return json.dumps(req_id)  # 1 and "1" are different ids


def _unkey(key: Any) -> Any:
    return json.loads(key)


def _now() -> float:
    return time.monotonic()


def log(message: str) -> None:
    sys.stderr.write(f"fleetbus serve: {message}\n")
    sys.stderr.flush()


def main(home: Path | None = None) -> int:
    env = dict(os.environ)
    if home is not None:
        env["FLEETBUS_HOME"] = str(home)
    try:
        relay = Relay(Home.from_env(env), env)
    except hs.HandshakeError as e:
        log(e.message)
        return 2
    try:
        return relay.run()
    except KeyboardInterrupt:
        return 130
