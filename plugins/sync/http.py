"""The sync service's wire: batches of finished-run records POSTed to a team's fleet API, and
its context fetched back, over one pooled `httpx2.AsyncClient`.

Every attempt ends in an `Outcome` the service acts on: `sent`, `retry` (408, 429, 5xx, no
answer at all) or `drop` (any other refusal: retrying cannot help). An outcome's reason is
one line for people and never holds the bearer token. Cancellation is not an outcome: a
cut-off attempt raises the cancel scope's exception like any other awaited call, and the
caller counts it as not sent.
"""

from __future__ import annotations

import email.utils
import json
import math
import time
from dataclasses import dataclass
from datetime import UTC
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import urlsplit

import httpx2 as httpx

from fleetbus.bus.version import version

__all__ = ["CONTEXT_PATH", "SYNC_PATH", "FleetAPI", "Outcome", "parse_retry_after"]

SYNC_PATH = "/v1/agent/sync"
CONTEXT_PATH = "/v1/agent/context"
SNIPPET = 200
"""Characters of a refusal's body quoted in its reason."""
MAX_CONTEXT = 16 * 1024 * 1024
"""Bytes of a context body read at most; a larger one is refused."""
MAX_ANSWER = 64 * 1024
"""Bytes of the answer to a push read at most (only its start is ever quoted)."""


@dataclass(frozen=True)
class Outcome:
    """How one request ended: `kind` (what the caller does next), the HTTP `status` (None when
    no response came), a one-line `reason` and, for a 429, the seconds it asked to wait."""

    kind: Literal["sent", "retry", "drop"]
    status: int | None
    reason: str
    retry_after: float | None = None


class FleetAPI:
    """A client of one fleet API (`url`, bearer `token`); an async context manager, or call
    `aclose()` when done. One connection pool for all requests."""

    def __init__(
        self, url: str, token: str | None, *, timeout: float = 10.0, verify: bool = True
    ) -> None:
        self.url = url[:-1] if url.endswith("/") else url
        self._token = token or None
        headers = {"User-Agent": f"fleetbus/{version()}"}
        if self._token:
            headers["Authorization"] = f"Bearer {self._token}"
        self._client = httpx.AsyncClient(
            headers=headers, timeout=timeout, verify=verify, follow_redirects=False
        )

    def __repr__(self) -> str:
        return f"FleetAPI({_shown(self.url)!r})"

    async def push(
        self,
        agent_id: str,
        fleet_node_id: str,
        dispatches: list[dict[str, Any]],
        idempotency_key: str,
    ) -> Outcome:
        """POST one batch to `/v1/agent/sync` under `idempotency_key` (the same on retries)."""
        try:
            encoded = json.dumps(
                dispatches, separators=(",", ":"), ensure_ascii=False, allow_nan=False
            )
        except (TypeError, ValueError) as e:
            return Outcome("drop", None, self._line(f"the batch is not valid JSON: {e}"))
        return await self.push_encoded(agent_id, fleet_node_id, encoded, idempotency_key)

    async def push_encoded(
        self, agent_id: str, fleet_node_id: str, dispatches: str, idempotency_key: str
    ) -> Outcome:
        """`push` of a batch whose dispatches are already a JSON array (the outbox keeps
        each batch encoded once, so a retry or a drain never encodes it again)."""
        body = (
            f'{{"agent_id":{json.dumps(agent_id, ensure_ascii=False)},'
            f'"fleet_node_id":{json.dumps(fleet_node_id, ensure_ascii=False)},'
            f'"dispatches":{dispatches}}}'
        )
        headers = {"Content-Type": "application/json", "Idempotency-Key": idempotency_key}
        url = f"{self.url}{SYNC_PATH}"
        got = await self._send("POST", url, MAX_ANSWER, content=body.encode(), headers=headers)
        if isinstance(got, Outcome):
            return got
        status, retry_after, raw, _ = got
        return self._classify(status, retry_after, raw, "the batch")

    async def pull(self, agent_id: str, since: str | None) -> tuple[Outcome, Any]:
        """GET `/v1/agent/context` for `agent_id` (changes `since` a watermark, when given):
        the outcome, and the parsed JSON body when it is `sent` (None otherwise)."""
        params = {"agent_id": agent_id} if since is None else {"agent_id": agent_id, "since": since}
        url = f"{self.url}{CONTEXT_PATH}"
        accept = {"Accept": "application/json"}
        got = await self._send("GET", url, MAX_CONTEXT, params=params, headers=accept)
        if isinstance(got, Outcome):
            return got, None
        status, retry_after, raw, complete = got
        outcome = self._classify(status, retry_after, raw, "the context request")
        if outcome.kind != "sent" or not raw.strip():
            return outcome, None
        if not complete:
            why = f"HTTP {status}, but the context exceeds {MAX_CONTEXT // 2**20} MiB"
            return Outcome("drop", status, why), None
        try:
            return outcome, json.loads(raw)
        except ValueError:
            return Outcome("retry", status, f"HTTP {status}, but the body is not JSON"), None

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._client.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- internals ---------------------------------------------------------------------------
    async def _send(
        self, method: str, url: str, limit: int, **kw: Any
    ) -> Outcome | tuple[int, float | None, bytes, bool]:
        """One request: (status, Retry-After seconds, the body's first `limit` bytes, whether
        that is all of it) or, with no usable response, the outcome."""
        try:
            async with self._client.stream(method, url, **kw) as response:
                chunks: list[bytes] = []
                size = 0
                complete = True
                async for chunk in response.aiter_bytes():
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > limit:  # the rest is not read: the connection is closed
                        complete = False
                        break
                status = response.status_code
                wait = (
                    parse_retry_after(response.headers.get("Retry-After"))
                    if status == 429
                    else None
                )
                return status, wait, b"".join(chunks)[:limit], complete
        except httpx.TransportError as e:
            return Outcome("retry", None, self._line(f"cannot reach {_shown(url)}: {_named(e)}"))
        except httpx.HTTPError as e:  # e.g. a body that cannot be decoded
            return Outcome("retry", None, self._line(f"bad answer from {_shown(url)}: {_named(e)}"))
        except httpx.InvalidURL as e:
            return Outcome("drop", None, self._line(f"invalid URL {_shown(url)}: {e}"))

    def _classify(self, status: int, retry_after: float | None, raw: bytes, what: str) -> Outcome:
        said = f"HTTP {status}"
        if 200 <= status < 300:
            return Outcome("sent", status, said)
        text = self._line(raw.decode("utf-8", "replace"))[:SNIPPET]  # scrubbed, then cut
        quoted = f"{said}: {text}" if text else said
        if status in (408, 429):
            return Outcome("retry", status, f"the API asked to try later: {quoted}", retry_after)
        if 400 <= status < 500:
            return Outcome("drop", status, f"the API refused {what}: {quoted}")
        if 500 <= status < 600:
            return Outcome("retry", status, f"the API failed: {quoted}")
        if 300 <= status < 400:
            return Outcome(
                "drop", status, f"the API redirected (not followed; check the URL): {said}"
            )
        return Outcome("retry", status, f"unexpected answer: {quoted}")

    def _line(self, text: str) -> str:
        """`text` on one line, the token replaced by ***."""
        line = " ".join(text.split())
        return line.replace(self._token, "***") if self._token else line


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After value (delta-seconds or an HTTP-date; a date in the
    past is 0.0); None when absent or unreadable."""
    if value is None or not value.strip():
        return None
    value = value.strip()
    try:
        seconds = float(value)
    except ValueError:
        try:
            when = email.utils.parsedate_to_datetime(value)
        except (TypeError, ValueError, IndexError):
            return None
        if when.tzinfo is None:
            when = when.replace(tzinfo=UTC)
        seconds = when.timestamp() - (time.time() if now is None else now)
        return max(0.0, seconds)
    return seconds if math.isfinite(seconds) and seconds >= 0 else None


def _shown(url: str) -> str:
    """`url` as shown to people: no user info, no query."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:
        host = f"[{host}]"
    try:
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        port = ""
    return f"{parts.scheme}://{host}{port}{parts.path}"


def _named(error: BaseException) -> str:
    detail = str(error)
    return f"{type(error).__name__}: {detail}" if detail else type(error).__name__
