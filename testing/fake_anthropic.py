"""A small fake of the Anthropic Messages API, for driving a real Claude Code offline.

Point Claude Code at it with `ANTHROPIC_BASE_URL=fake.url` (and any `sk-ant-api03-...`
key). It listens on 127.0.0.1 only, on a free port, in a background thread, and records
every request it gets (`fake.requests`), so a test can wait for what the client sent.

    from fleetbus.testing.fake_anthropic import (
        FakeAnthropic, has_tool_result, offers_tool, text, tool_use,
    )

    script = [
        offers_tool("mcp__fleetbus__runner_status", tool_use("mcp__fleetbus__runner_status", {})),
        has_tool_result(text("All quiet.")),
    ]
    with FakeAnthropic(script) as fake:
        ...  # run `claude` with ANTHROPIC_BASE_URL=fake.url
        fake.wait_for(lambda r: "All quiet" in r.text, timeout=30)

How `POST /v1/messages` is answered: the request goes to the first step of the script that
has not fired yet. A step is a callable taking the `Request` and returning a `Reply`, or
None when the request is not its business; a step that replies has fired and is not asked
again (unless wrapped in `Repeatedly`). A request no remaining step answers gets the default reply (a short text that ends
the turn), so side requests (titles, summaries, quota checks) are always answered; a step
that raises gets the request a 500 API error, and the error is kept in `fake.errors`. Replies
are streamed as server-sent events when the request asks for `"stream": true`, else sent as
one JSON message. `POST /v1/messages/count_tokens` gets a rough count, `/api/hello` a 200,
and any other path an empty JSON object. Used as the client's HTTPS proxy
(`HTTPS_PROXY=fake.url`, with `NO_PROXY=127.0.0.1`), it records and refuses every `CONNECT`,
so nothing leaves the machine and the attempts show in the log.

`channel_events(request)` reads the `<channel source=...>` blocks Claude Code puts into the
conversation for an MCP server's `notifications/claude/channel`.

Standard library only.
"""

from __future__ import annotations

import html
import itertools
import json
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from .fake_http import FakeAPI, FakeHandler

__all__ = [
    "ChannelEvent",
    "FakeAnthropic",
    "Repeatedly",
    "Reply",
    "Request",
    "Step",
    "channel_events",
    "has_tool_result",
    "offers_tool",
    "sse_events",
    "text",
    "tool_use",
    "when",
]


@dataclass(frozen=True)
class Request:
    """One request the fake received: its method, path (with query), headers and body
    (parsed JSON, or None when the body was empty or not JSON)."""

    seq: int
    method: str
    path: str
    headers: Mapping[str, str]
    body: Any
    raw: bytes
    at: float = field(default_factory=time.monotonic)

    @property
    def route(self) -> str:
        """The path without its query string."""
        return self.path.split("?", 1)[0]

    @property
    def is_messages(self) -> bool:
        """A `POST /v1/messages` (a model turn), not count_tokens or anything else."""
        return self.method == "POST" and self.route.rstrip("/") == "/v1/messages"

    @property
    def text(self) -> str:
        """The body as text, for searching."""
        return self.raw.decode("utf-8", "replace")

    @property
    def tools(self) -> list[str]:
        """Names of the tools the request offers the model."""
        tools = self.body.get("tools") if isinstance(self.body, dict) else None
        return [t["name"] for t in tools or [] if isinstance(t, dict) and "name" in t]

    @property
    def messages(self) -> list[dict[str, Any]]:
        messages = self.body.get("messages") if isinstance(self.body, dict) else None
        return [m for m in messages or [] if isinstance(m, dict)]

    def texts(self) -> list[str]:
        """Every string in the conversation (`messages`: text blocks, tool results, and the
        system messages a client puts there), oldest first, decoded."""
        out: list[str] = []

        def walk(node: Any) -> None:
            if isinstance(node, str):
                out.append(node)
            elif isinstance(node, list):
                for item in node:
                    walk(item)
            elif isinstance(node, dict):
                for key, value in node.items():
                    if key not in ("type", "id", "tool_use_id", "name", "cache_control"):
                        walk(value)

        walk(self.messages)
        return out

    def tool_results(self) -> list[dict[str, Any]]:
        """Every `tool_result` block of the conversation, oldest first."""
        return [
            block
            for message in self.messages
            if isinstance(message.get("content"), list)
            for block in message["content"]
            if isinstance(block, dict) and block.get("type") == "tool_result"
        ]

    def tool_result(self, tool_use_id: str) -> str | None:
        """The text of the result of tool call `tool_use_id`, or None when the request
        carries no such result."""
        for block in self.tool_results():
            if block.get("tool_use_id") == tool_use_id:
                content = block.get("content")
                if isinstance(content, list):
                    return "".join(str(b.get("text", "")) for b in content if isinstance(b, dict))
                return str(content or "")
        return None

    def summary(self) -> str:
        """One line: what it was, for failure messages."""
        line = f"#{self.seq} {self.method} {self.path}"
        if isinstance(self.body, dict) and "messages" in self.body:
            model = self.body.get("model", "?")
            last = self.messages[-1] if self.messages else {}
            line += (
                f" model={model} stream={bool(self.body.get('stream'))} "
                f"tools={len(self.tools)} messages={len(self.messages)} "
                f"last={_excerpt(last.get('content'))!r}"
            )
        return line


@dataclass(frozen=True)
class Reply:
    """An assistant message: content blocks (`text` and `tool_use` dicts, as in the API)
    and why it stopped (`end_turn`, `tool_use`, ...)."""

    content: tuple[dict[str, Any], ...]
    stop_reason: str = "end_turn"


Step = Callable[[Request], Reply | None]
"""One step of a script: a Reply for a request it answers, else None."""

_ids = itertools.count(1)


def text(words: str) -> Reply:
    """A reply saying `words` and ending the turn."""
    return Reply(({"type": "text", "text": words},), "end_turn")


def tool_use(name: str, input: Mapping[str, Any], *, say: str = "", id: str | None = None) -> Reply:
    """A reply calling tool `name` with `input` (after saying `say`, if given)."""
    block = {
        "type": "tool_use",
        "id": id or f"toolu_fake{next(_ids):06d}",
        "name": name,
        "input": dict(input),
    }
    said = ({"type": "text", "text": say},) if say else ()
    return Reply((*said, block), "tool_use")


def when(predicate: Callable[[Request], object], reply: Reply) -> Step:
    """A step that answers the first request matching `predicate` with `reply`."""
    return lambda request: reply if predicate(request) else None


def offers_tool(name: str, reply: Reply) -> Step:
    """A step that answers the first request offering tool `name` with `reply`."""
    return when(lambda request: name in request.tools, reply)


@dataclass(frozen=True)
class Repeatedly:
    """A step that stays in the script after replying: it answers every request it
    matches (a step placed after it is still asked when it does not match)."""

    step: Step

    def __call__(self, request: Request) -> Reply | None:
        return self.step(request)


def has_tool_result(reply: Reply, tool_use_id: str | None = None) -> Step:
    """A step that answers the first request carrying a tool result (of `tool_use_id`,
    when given) with `reply`."""

    def step(request: Request) -> Reply | None:
        results = request.tool_results()
        if tool_use_id is not None:
            results = [r for r in results if r.get("tool_use_id") == tool_use_id]
        return reply if results else None

    return step


@dataclass(frozen=True)
class ChannelEvent:
    """A channel notification as Claude Code hands it to the model:
    `<channel source="NAME" key="value" ...>content</channel>`."""

    source: str
    meta: dict[str, str]
    content: str


_CHANNEL = re.compile(
    r'<channel source="([^"]*)"((?:\s+[A-Za-z0-9_]+="[^"]*")*)\s*>(.*?)</channel>', re.S
)
_ATTR = re.compile(r'([A-Za-z0-9_]+)="([^"]*)"')


def channel_events(request: Request, source: str | None = None) -> list[ChannelEvent]:
    """The channel events in `request`'s conversation (of `source`, when given), whether
    they arrived between turns (a user message) or mid-turn (a system message)."""
    events = []
    for chunk in request.texts():
        for match in _CHANNEL.finditer(chunk):
            if source is None or match[1] == source:
                meta = {k: html.unescape(v) for k, v in _ATTR.findall(match[2])}
                events.append(ChannelEvent(match[1], meta, html.unescape(match[3].strip())))
    return events


def _excerpt(value: Any, limit: int = 160) -> str:
    if isinstance(value, list):
        value = " ".join(
            str(b.get("text") or b.get("type")) if isinstance(b, dict) else str(b) for b in value
        )
    flat = " ".join(str(value or "").split())
    return flat if len(flat) <= limit else flat[: limit - 1] + "\u2026"


def _count_tokens(body: Any) -> int:
    """A rough token count: a quarter of the JSON's length."""
    return max(1, len(json.dumps(body)) // 4) if body is not None else 1


def _message(reply: Reply, model: str, input_tokens: int) -> dict[str, Any]:
    return {
        "id": f"msg_fake{next(_ids):06d}",
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": [dict(b) for b in reply.content],
        "stop_reason": reply.stop_reason,
        "stop_sequence": None,
        "usage": {"input_tokens": input_tokens, "output_tokens": 1 + _count_tokens(reply.content)},
    }


def sse_events(reply: Reply, model: str, input_tokens: int) -> Iterator[tuple[str, dict[str, Any]]]:
    """The streaming events of `reply`, as (event name, data) pairs."""
    message = _message(reply, model, input_tokens)
    output_tokens = message["usage"]["output_tokens"]
    start = {**message, "content": [], "stop_reason": None}
    start["usage"] = {"input_tokens": input_tokens, "output_tokens": 1}
    yield "message_start", {"type": "message_start", "message": start}
    for index, block in enumerate(message["content"]):
        if block["type"] == "tool_use":
            opening = {**block, "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        elif block["type"] == "text":
            opening = {**block, "text": ""}
            delta = {"type": "text_delta", "text": block["text"]}
        else:
            opening, delta = block, {}
        yield (
            "content_block_start",
            {
                "type": "content_block_start",
                "index": index,
                "content_block": opening,
            },
        )
        if delta:
            yield (
                "content_block_delta",
                {"type": "content_block_delta", "index": index, "delta": delta},
            )
        yield "content_block_stop", {"type": "content_block_stop", "index": index}
    yield (
        "message_delta",
        {
            "type": "message_delta",
            "delta": {"stop_reason": reply.stop_reason, "stop_sequence": None},
            "usage": {"output_tokens": output_tokens},
        },
    )
    yield "message_stop", {"type": "message_stop"}


DEFAULT_REPLY = text("OK.")


class FakeAnthropic(FakeAPI[Request]):
    """The fake API server; use it as a context manager (or call start/stop)."""

    name = "fake-anthropic"

    def __init__(
        self,
        script: Iterable[Step] = (),
        *,
        default: Reply = DEFAULT_REPLY,
        host: str = "127.0.0.1",
    ) -> None:
        super().__init__(host=host)
        self.script: list[Step] = list(script)
        self.default = default
        self.replies: list[tuple[Request, Reply]] = []  # what each /v1/messages got

    @property
    def url(self) -> str:
        """The base URL, e.g. http://127.0.0.1:PORT (what ANTHROPIC_BASE_URL takes)."""
        return self.origin

    # -- what it received --------------------------------------------------------------------
    def messages_requests(self) -> list[Request]:
        """The `POST /v1/messages` requests so far."""
        with self._cond:
            return [r for r in self.requests if r.is_messages]

    def log(self, limit: int = 40) -> str:
        """The last `limit` requests, one line each, with the reply each turn got."""
        with self._cond:
            answered = {id(req): reply for req, reply in self.replies}
            lines = []
            for request in self.requests[-limit:]:
                line = request.summary()
                reply = answered.get(id(request))
                if reply is not None:
                    kinds = ",".join(
                        b.get("name", b["type"]) if b["type"] == "tool_use" else b["type"]
                        for b in reply.content
                    )
                    line += f" -> {kinds} ({reply.stop_reason})"
                lines.append(line)
            skipped = len(self.requests) - len(lines)
            errors = [f"script error: {e}" for e in self.errors]
        head = [f"({skipped} earlier requests not shown)"] if skipped > 0 else []
        return "\n".join(head + lines + errors) or "(no requests)"

    # -- answering ---------------------------------------------------------------------------
    def _reply_for(self, request: Request) -> Reply:
        with self._cond:
            for index, step in enumerate(self.script):
                reply = step(request)
                if reply is not None:
                    if not isinstance(step, Repeatedly):
                        del self.script[index]
                    break
            else:
                reply = self.default
            self.replies.append((request, reply))
            return reply

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self
        seq = itertools.count(1)

        class Handler(FakeHandler):
            server_version = "fake-anthropic/1"

            def _take(self) -> Request:
                raw, body = self.read_body()
                request = Request(
                    seq=next(seq),
                    method=self.command,
                    path=self.path,
                    headers=dict(self.headers.items()),
                    body=body,
                    raw=raw,
                )
                fake._record(request)
                return request

            def end_headers(self) -> None:
                self.send_header("request-id", f"req_fake{next(_ids):06d}")
                super().end_headers()

            def do_HEAD(self) -> None:
                self._take()
                self.send_body(200, b"", "application/json")

            def do_GET(self) -> None:
                request = self._take()
                self.send_json({"message": "hello"} if request.route == "/api/hello" else {})

            def do_POST(self) -> None:
                request = self._take()
                if request.route.rstrip("/") == "/v1/messages/count_tokens":
                    self.send_json({"input_tokens": _count_tokens(request.body)})
                elif request.is_messages and isinstance(request.body, dict):
                    try:
                        reply = fake._reply_for(request)
                    except Exception as e:
                        message = f"#{request.seq}: {type(e).__name__}: {e}"
                        fake._error(message)
                        error = {"type": "api_error", "message": f"fake script failed {message}"}
                        self.send_json({"type": "error", "error": error}, 500)
                        return
                    model = str(request.body.get("model") or "claude-fake")
                    tokens = _count_tokens(request.body)
                    if request.body.get("stream"):
                        stream = "".join(
                            f"event: {name}\ndata: {json.dumps(data)}\n\n"
                            for name, data in sse_events(reply, model, tokens)
                        )
                        self.send_body(200, stream.encode(), "text/event-stream")
                    else:
                        self.send_json(_message(reply, model, tokens))
                elif request.is_messages:
                    error = {"type": "invalid_request_error", "message": "body is not JSON"}
                    self.send_json({"type": "error", "error": error}, 400)
                else:
                    self.send_json({})

            do_PUT = do_PATCH = do_DELETE = do_POST

            def do_CONNECT(self) -> None:
                # A client told to use this server as its HTTPS proxy: record the attempt,
                # connect nowhere.
                self._take()
                self.send_body(403, b"fake-anthropic: no outbound network\n", "text/plain")

        return Handler
