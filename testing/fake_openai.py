"""A small fake of the OpenAI Responses API, to drive a real client (the Codex CLI) offline.

`FakeResponses` listens on 127.0.0.1 (a free port) and answers each `POST .../responses` with
the next reply of its script; a reply is a list of output items (build them with `message`
and `function_call`) or a callable that gets the recorded `Request` and returns the items.
When the script runs out it answers with the message "done", so a client never hangs. Every
request is recorded (`.requests`, the model requests also in `.model_requests`); anything
else (`GET /v1/models`, ...) gets a harmless empty answer.

    with FakeResponses([
        [function_call("runner_dispatch", {"agent": "fake", ...}, namespace="mcp__fleetbus")],
        [message("dispatched")],
    ]) as api:
        (codex_home / "config.toml").write_text(codex_config(api.url) + my_mcp_server_table)
        ...  # run `codex exec` with FAKE_OPENAI_API_KEY set to anything
        assert api.model_requests[1].function_call_output("call_1") is not None, api.summary()

A request with `"stream": true` gets Server-Sent Events: `response.created`,
`response.in_progress`, per output item `response.output_item.added`, (for a message)
`response.output_text.delta`, `response.output_item.done`, then `response.completed` with
the whole response (`id`, `output`, `usage`). Codex 0.169 takes the items from
`response.output_item.done` (not from `response.completed`), needs `response.completed` and
its `id`, and fails the turn when the stream closes without it. Without streaming the answer
is the response object as JSON. Standard library only.
"""

from __future__ import annotations

import itertools
import json
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from .fake_http import FakeAPI, FakeHandler

Item = dict[str, Any]
Reply = Sequence[Item] | Callable[["Request"], Sequence[Item]]

API_KEY_ENV = "FAKE_OPENAI_API_KEY"
"""The environment variable `codex_config` tells Codex to read its API key from."""

_ids = itertools.count(1)


def _new_id(prefix: str) -> str:
    return f"{prefix}_fake{next(_ids):06d}"


def message(text: str) -> Item:
    """An assistant message output item with one `output_text` part."""
    return {
        "type": "message",
        "id": _new_id("msg"),
        "status": "completed",
        "role": "assistant",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def function_call(
    name: str,
    arguments: Mapping[str, Any] | str,
    *,
    call_id: str = "call_1",
    namespace: str | None = None,
) -> Item:
    """A `function_call` output item. `namespace` names the tool group the function belongs
    to: Codex offers an MCP server's tools as the namespace `mcp__<server>`."""
    item: Item = {
        "type": "function_call",
        "id": _new_id("fc"),
        "status": "completed",
        "call_id": call_id,
        "name": name,
        "arguments": arguments if isinstance(arguments, str) else json.dumps(arguments),
    }
    if namespace is not None:
        item["namespace"] = namespace
    return item


def codex_config(url: str, *, env_key: str = API_KEY_ENV, model: str = "fake-model") -> str:
    """The top of a Codex CLI `config.toml` (in a private CODEX_HOME) that sends every model
    request to the fake at `url` and nothing anywhere else: a custom `responses` provider
    without retries, no update check, analytics, telemetry or plugins. Append the
    `[mcp_servers.*]` tables to test."""
    return f"""\
model = {_toml(model)}
model_provider = "fake"
check_for_update_on_startup = false

[model_providers.fake]
name = "fake"
base_url = {_toml(url)}
env_key = {_toml(env_key)}
wire_api = "responses"
request_max_retries = 0
stream_max_retries = 0

[analytics]
enabled = false

[otel]
exporter = "none"

[features]
plugins = false
"""


def _toml(value: str) -> str:
    """A TOML basic string (JSON's escapes are valid TOML)."""
    return json.dumps(value)


@dataclass
class Request:
    """One request the fake received; `at` is its `time.monotonic()`."""

    method: str
    path: str
    headers: dict[str, str]
    body: Any
    at: float = field(default_factory=time.monotonic)

    @property
    def is_model_request(self) -> bool:
        return self.method == "POST" and self.path.split("?")[0].rstrip("/").endswith("/responses")

    @property
    def input(self) -> list[Item]:
        """The request's `input` items (empty if it has none)."""
        items = self.body.get("input") if isinstance(self.body, dict) else None
        return items if isinstance(items, list) else []

    @property
    def tools(self) -> list[Item]:
        """The request's `tools` (functions, namespaces of functions, built-in tools)."""
        tools = self.body.get("tools") if isinstance(self.body, dict) else None
        return tools if isinstance(tools, list) else []

    def tool_names(self) -> list[str]:
        """Names of the offered tools and namespaces (built-in tools by their type)."""
        return [str(t.get("name") or t.get("type")) for t in self.tools]

    def namespace(self, name: str) -> list[str] | None:
        """Names of the functions in namespace `name`, or None when it is not offered."""
        for tool in self.tools:
            if tool.get("type") == "namespace" and tool.get("name") == name:
                return [str(t.get("name")) for t in tool.get("tools") or ()]
        return None

    def function_call_output(self, call_id: str) -> str | None:
        """The output the client sent back for `call_id`, as text, or None."""
        for item in self.input:
            if item.get("type") == "function_call_output" and item.get("call_id") == call_id:
                output = item.get("output")
                return output if isinstance(output, str) else json.dumps(output)
        return None

    def summary(self) -> str:
        """One line: method, path, offered tools, and the types of the input items."""
        if not self.is_model_request:
            return f"{self.method} {self.path}"
        kinds = [str(item.get("type") or item.get("role")) for item in self.input]
        return f"{self.method} {self.path} tools={self.tool_names()} input={kinds}"


class FakeResponses(FakeAPI[Request]):
    """A fake Responses API on 127.0.0.1 answering `POST .../responses` from `script`;
    a context manager (or `start()` / `stop()`)."""

    name = "fake-openai"

    def __init__(self, script: Sequence[Reply] = (), *, model: str = "fake-model") -> None:
        super().__init__()
        self.script = list(script)
        self.model = model

    @property
    def url(self) -> str:
        """The API's base URL, `http://127.0.0.1:PORT/v1` (a client's `base_url`)."""
        return f"{self.origin}/v1"

    # -- inspection ---------------------------------------------------------------------------
    @property
    def model_requests(self) -> list[Request]:
        """The model requests (`POST .../responses`) so far."""
        with self._cond:
            return [r for r in self.requests if r.is_model_request]

    def wait_for_requests(self, count: int, timeout: float = 30.0) -> bool:
        """Wait until `count` model requests have arrived; False on timeout."""
        return self.wait_until(lambda: len(self.model_requests) >= count, timeout)

    def summary(self) -> str:
        """Every recorded request, one line each with its time since `start()`, and any
        error raised by a script entry (for assertion messages)."""
        with self._cond:
            lines = [f"  +{r.at - self.started_at:.2f}s {r.summary()}" for r in self.requests] or [
                "  (no requests)"
            ]
            lines += [f"  error: {e}" for e in self.errors]
        return "\n".join(lines)

    # -- internals ----------------------------------------------------------------------------
    def _record_model_request(self, request: Request) -> int:
        """Record `request`; its index among the model requests (-1 for others)."""
        with self._cond:
            self._record(request)
            return len(self.model_requests) - 1 if request.is_model_request else -1

    def _response(self, request: Request, index: int) -> dict[str, Any]:
        reply = self.script[index] if index < len(self.script) else [message("done")]
        items = reply(request) if callable(reply) else reply
        body = request.body if isinstance(request.body, dict) else {}
        return {
            "id": _new_id("resp"),
            "object": "response",
            "created_at": int(time.time()),
            "status": "completed",
            "model": body.get("model", self.model),
            "output": [dict(item) for item in items],
            "usage": {
                "input_tokens": 10,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens": 5,
                "output_tokens_details": {"reasoning_tokens": 0},
                "total_tokens": 15,
            },
        }

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(FakeHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                fake._record(self._request(None))
                self.send_json({"object": "list", "data": []})

            def do_POST(self) -> None:
                raw, body = self.read_body()
                if body is None and raw:
                    body = raw.decode("utf-8", "replace")
                request = self._request(body)
                index = fake._record_model_request(request)
                if index < 0:
                    self.send_json({})
                    return
                try:
                    response = fake._response(request, index)
                except Exception as exc:
                    fake._error(f"reply {index}: {exc!r}")
                    self.send_json({"error": {"message": f"fake reply failed: {exc!r}"}}, 500)
                    return
                if isinstance(body, dict) and body.get("stream"):
                    self._sse(response)
                else:
                    self.send_json(response)

            def _request(self, body: Any) -> Request:
                headers = {k.lower(): v for k, v in self.headers.items()}
                return Request(self.command, self.path, headers, body)

            def _sse(self, response: dict[str, Any]) -> None:
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Cache-Control", "no-cache")
                self.send_header("Connection", "close")
                self.end_headers()
                self.close_connection = True
                for event in _events(response):
                    self.wfile.write(
                        f"event: {event['type']}\ndata: {json.dumps(event)}\n\n".encode()
                    )
                self.wfile.flush()

        return Handler


def _events(response: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """The SSE events of a streamed `response`, in the order the real API sends them."""
    seq = itertools.count()
    pending = {**response, "status": "in_progress", "output": []}
    yield {"type": "response.created", "sequence_number": next(seq), "response": pending}
    yield {"type": "response.in_progress", "sequence_number": next(seq), "response": pending}
    for index, item in enumerate(response["output"]):
        yield {
            "type": "response.output_item.added",
            "sequence_number": next(seq),
            "output_index": index,
            "item": item,
        }
        if item.get("type") == "message":
            for part_index, part in enumerate(item.get("content") or ()):
                if part.get("type") == "output_text":
                    yield {
                        "type": "response.output_text.delta",
                        "sequence_number": next(seq),
                        "item_id": item.get("id"),
                        "content_index": part_index,
                        "delta": part.get("text", ""),
                        "output_index": index,
                    }
        yield {
            "type": "response.output_item.done",
            "sequence_number": next(seq),
            "output_index": index,
            "item": item,
        }
    yield {"type": "response.completed", "sequence_number": next(seq), "response": response}
