"""A raw MCP client over a subprocess's stdio, for tests that must open a connection
exactly as a real client does (no SDK in between to smooth the handshake).

    with WireClient(["fleetbus", "serve"], env) as c:
        c.open_like_claude_code()
        c.call_tool("runner_status", {})
        event = c.wait_for(lambda m: m.get("method") == CHANNEL_METHOD)

It sends the lines you give it and keeps every line the server writes, with the time it
arrived (`time.monotonic()`), so a benchmark can measure a spawn-to-answer time too.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

CHANNEL_METHOD = "notifications/claude/channel"
DISCOVER_PROBE_ID = "server-discover-probe-1"
MODERN = "2026-07-28"
HANDSHAKE = "2025-11-25"
Message = dict[str, Any]


class WireClient:
    """`argv` spawned with pipes; `messages` is what it wrote, in order, as parsed JSON."""

    def __init__(
        self,
        argv: Sequence[str],
        env: Mapping[str, str],
        *,
        cwd: Path | None = None,
        stderr: IO[Any] | int | None = subprocess.DEVNULL,
    ) -> None:
        self.spawned_at = time.monotonic()
        self.proc = subprocess.Popen(
            list(argv),
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
        )
        self.messages: list[Message] = []
        self.arrived: list[float] = []
        self.not_json: list[bytes] = []
        self._ids = itertools.count(1)
        self._cond = threading.Condition()
        self._eof = False
        self._reader = threading.Thread(target=self._read, daemon=True, name="wire-reader")
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            now = time.monotonic()
            try:
                msg = json.loads(line)
            except ValueError:
                with self._cond:
                    self.not_json.append(line)
                continue
            with self._cond:
                self.messages.append(msg)
                self.arrived.append(now)
                self._cond.notify_all()
        with self._cond:
            self._eof = True
            self._cond.notify_all()

    # -- sending -----------------------------------------------------------------------------
    def send_line(self, line: bytes | str) -> None:
        assert self.proc.stdin is not None
        data = line.encode() if isinstance(line, str) else line
        self.proc.stdin.write(data if data.endswith(b"\n") else data + b"\n")
        self.proc.stdin.flush()

    def send(self, obj: Any) -> None:
        self.send_line(json.dumps(obj))

    def request(self, method: str, params: Any = None, *, req_id: Any = None) -> Any:
        """Send a request; returns its id (numbered from 1 unless given)."""
        if req_id is None:
            req_id = next(self._ids)
        msg: Message = {"jsonrpc": "2.0", "id": req_id, "method": method}
        if params is not None:
            msg["params"] = params
        self.send(msg)
        return req_id

    def notify(self, method: str, params: Any = None) -> None:
        msg: Message = {"jsonrpc": "2.0", "method": method}
        if params is not None:
            msg["params"] = params
        self.send(msg)

    # -- receiving ---------------------------------------------------------------------------
    def wait_for(self, predicate: Callable[[Message], Any], timeout: float = 10.0) -> Message:
        """The first message (already received or arriving within `timeout`) matching."""
        deadline = time.monotonic() + timeout
        seen = 0
        with self._cond:
            while True:
                for msg in self.messages[seen:]:
                    if predicate(msg):
                        return msg
                seen = len(self.messages)
                left = deadline - time.monotonic()
                if left <= 0 or self._eof:
                    raise AssertionError(
                        f"no matching message within {timeout}s"
                        f"{' (the server closed its output)' if self._eof else ''}; got:\n"
                        + self.dump()
                    )
                self._cond.wait(left)

    def response(self, req_id: Any, timeout: float = 10.0) -> Message:
        return self.wait_for(
            lambda m: m.get("id") == req_id and ("result" in m or "error" in m), timeout
        )

    def call(self, method: str, params: Any = None, timeout: float = 10.0) -> Message:
        return self.response(self.request(method, params), timeout)

    def call_tool(self, name: str, arguments: Any, timeout: float = 30.0) -> Message:
        return self.call("tools/call", {"name": name, "arguments": arguments}, timeout)

    def arrival(self, msg: Message) -> float:
        with self._cond:
            for m, t in zip(self.messages, self.arrived, strict=True):
                if m is msg:
                    return t
        raise KeyError("not a message of this client")

    def dump(self, last: int = 20) -> str:
        lines = [json.dumps(m)[:300] for m in self.messages[-last:]]
        return "\n".join(f"  {line}" for line in lines) or "  (nothing)"

    # -- how real clients open ---------------------------------------------------------------
    def open_like_claude_code(self, *, version: str = "2.1.328") -> Message:
        """Claude Code 2.1.328's opening: a `server/discover` probe on the modern protocol,
        then (when refused with -32601) `initialize` at 2025-11-25 and `initialized`.
        Returns the initialize response; the probe's answer is in `messages`."""
        self.request(
            "server/discover",
            {"_meta": {"io.modelcontextprotocol/protocolVersion": MODERN}},
            req_id=DISCOVER_PROBE_ID,
        )
        probe = self.response(DISCOVER_PROBE_ID)
        if probe.get("error", {}).get("code") != -32601:
            return probe
        init = self.call(
            "initialize",
            {
                "protocolVersion": HANDSHAKE,
                "capabilities": {"roots": {}, "elicitation": {}},
                "clientInfo": {"name": "claude-code", "version": version},
            },
        )
        if "result" in init:
            self.notify("notifications/initialized")
        return init

    def open(self, client_name: str = "wire-test", protocol: str = HANDSHAKE) -> Message:
        """A plain handshake-era opening: `initialize`, then `initialized`."""
        init = self.call(
            "initialize",
            {
                "protocolVersion": protocol,
                "capabilities": {},
                "clientInfo": {"name": client_name, "version": "1"},
            },
        )
        if "result" in init:
            self.notify("notifications/initialized")
        return init

    # -- closing -----------------------------------------------------------------------------
    def close(self, timeout: float = 10.0) -> int:
        """Close its input (as a client does) and wait for it to exit; kill it if it won't."""
        if self.proc.stdin is not None and not self.proc.stdin.closed:  # also when it died
            try:
                self.proc.stdin.close()
            except BrokenPipeError:  # it died with input unread: drop what is buffered
                self.proc.stdin.raw.close()  # type: ignore[attr-defined]
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(
                f"the server did not exit within {timeout}s of its input closing"
            ) from None
        finally:
            self._reader.join(timeout)
            if self.proc.stdout is not None:
                self.proc.stdout.close()

    def __enter__(self) -> WireClient:
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.close()
        except AssertionError:
            if exc[0] is None:
                raise


SERVE = [sys.executable, "-m", "fleetbus.server", "serve"]


def serve(env: Mapping[str, str], log_dir: Path, name: str = "serve") -> WireClient:
    """`fleetbus serve` (stdio) with this interpreter, its stderr kept in `log_dir/NAME.stderr`."""
    with open(log_dir / f"{name}.stderr", "ab") as errlog:
        return WireClient(SERVE, env, stderr=errlog)
