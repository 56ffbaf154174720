"""The MCP handshake fleetbus serves over stdio, in one place: stdlib only.

Channel events (`notifications/claude/channel`) reach Claude Code only on a connection
that negotiated protocol 2025-11-25 or earlier with `initialize` and declared
`experimental["claude/channel"]` there. Claude Code opens every stdio server with a
`server/discover` probe (protocol 2026-07-28) and falls back to `initialize` only when the
server answers -32601; a server that answers the probe is served on the modern protocol,
where Claude Code never delivers channels. So `fleetbus serve` refuses the probe by
default. The setting is `FLEETBUS_MCP_DISCOVER`:

- `refuse` (default): `server/discover` gets -32601 and clients fall back to `initialize`;
- `answer`: the connection is passed untouched to the SDK, which serves the modern
  protocol too (for a day when Claude Code delivers channels there).

The relay answers `initialize` itself (so a client's grace period never waits on the hub)
with what the SDK session in the hub would answer; `tests/server/test_mcp_handshake.py` checks
that the two agree.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from fleetbus.bus.version import version

PROTOCOL_VERSIONS = ("2024-11-05", "2025-03-26", "2025-06-18", "2025-11-25")
"""The handshake-era versions served, oldest to newest (the SDK's handshake versions)."""
LATEST = PROTOCOL_VERSIONS[-1]
DISCOVER_SETTING = "FLEETBUS_MCP_DISCOVER"
DISCOVER_MODES = ("refuse", "answer")
CHANNEL_CLIENTS = frozenset({"claude-code"})
"""Clients known to show channel events (others are told to wait with fleetbus_watch)."""
CHANNEL_CAPABILITY = "claude/channel"
VERSION_FORMAT = re.compile(r"^\d{4}-\d{2}-\d{2}$")

PARSE_ERROR, INVALID_REQUEST, METHOD_NOT_FOUND, INVALID_PARAMS = -32700, -32600, -32601, -32602

CAPABILITIES: dict[str, Any] = {
    "experimental": {CHANNEL_CAPABILITY: {}},
    "resources": {"subscribe": False, "listChanged": False},
    "tools": {"listChanged": True},
}

_COMMON = """\
fleetbus runs coding agents (codex, claude, gemini, shell, or any configured command) in
isolated workspaces, under concurrency limits and a persistent queue.

- Start work with runner_dispatch {agent, prompt, workspace}. It returns at once with a
  run_id and status `running`, or `queued` with the reason (frozen, lane full, rate delay,
  backoff, session busy).
"""
_WITH_CHANNELS = """\
- Do not poll: when a run starts, finishes, fails, times out or blocks, a
  <channel source="fleetbus"> event arrives: one readable line, with meta run_id,
  workspace, agent and status (a burst arrives as one event whose meta run_ids and
  statuses list the runs). Events about runs you started come to this session; fleet-wide
  events (queue drained, rate limits) to every session.
"""
_WITHOUT_CHANNELS = """\
- This client does not show fleetbus's channel events: to learn how a run ended, call
  fleetbus_watch {run_ids, timeout_s <= 100}, which returns as soon as one of the runs
  ends (call it again while runs are pending), then read runner_status for details.
"""
_EITHER = """\
- If your client shows <channel source="fleetbus"> events, one arrives when a run starts,
  finishes, fails, times out or blocks (meta run_id, workspace, agent, status). Otherwise
  call fleetbus_watch {run_ids, timeout_s <= 100}, which returns as soon as one of the
  runs ends, then read runner_status.
"""
_TAIL = """\
- status `blocked` means the agent stopped with a question (quoted in the event and in
  runner_status). Answer it with runner_dispatch to the same workspace, session_mode
  "followup", the answer as the prompt: the new run gets the previous run's id, status,
  question and output tail as context.
- runner_status shows counts, lanes and recent runs; the resource
  fleetbus://runs/{run_id}/log holds a run's output. runner_stop / runner_start freeze and
  unfreeze dispatch; runner_kill stops runs.
"""


class HandshakeError(Exception):
    """A JSON-RPC error for a handshake message: `code` and one clear line."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def discover_mode(env: Mapping[str, str]) -> str:
    mode = env.get(DISCOVER_SETTING, "refuse").strip().lower() or "refuse"
    if mode not in DISCOVER_MODES:
        raise HandshakeError(
            INVALID_PARAMS,
            f"{DISCOVER_SETTING}={mode!r} is not a mode; use one of {', '.join(DISCOVER_MODES)}",
        )
    return mode


def shows_channels(params: Mapping[str, Any]) -> bool:
    """Whether the client opening with these `initialize` params shows channel events."""
    info = params.get("clientInfo")
    name = info.get("name") if isinstance(info, dict) else None
    caps = params.get("capabilities")
    experimental = caps.get("experimental") if isinstance(caps, dict) else None
    declared = isinstance(experimental, dict) and CHANNEL_CAPABILITY in experimental
    return declared or name in CHANNEL_CLIENTS


def instructions(channels: bool | None) -> str:
    """The server's instructions for a client that shows channel events (True), one that
    does not (False), or one we cannot tell (None: HTTP)."""
    middle = {True: _WITH_CHANNELS, False: _WITHOUT_CHANNELS, None: _EITHER}[channels]
    return _COMMON + middle + _TAIL


def negotiate(params: Any) -> str:
    """The protocol version to serve for these `initialize` params, or a HandshakeError.

    A version we serve is echoed; a newer date gets our latest (the client decides whether
    it can speak it, as the MCP spec says); anything else is refused with a clear line.
    """
    if not isinstance(params, dict):
        raise HandshakeError(INVALID_PARAMS, "initialize needs params {protocolVersion, ...}")
    asked = params.get("protocolVersion")
    served = f"fleetbus serves MCP {PROTOCOL_VERSIONS[0]} to {LATEST}"
    if not isinstance(asked, str) or not VERSION_FORMAT.match(asked):
        raise HandshakeError(
            INVALID_PARAMS,
            f"protocolVersion {asked!r} is not an MCP version (YYYY-MM-DD); {served}",
        )
    if asked in PROTOCOL_VERSIONS:
        return asked
    if asked > LATEST:
        return LATEST
    raise HandshakeError(INVALID_PARAMS, f"protocolVersion {asked!r} is not supported; {served}")


def initialize_result(params: Mapping[str, Any], protocol: str) -> dict[str, Any]:
    return {
        "protocolVersion": protocol,
        "capabilities": CAPABILITIES,
        "serverInfo": {"name": "fleetbus", "version": version()},
        "instructions": instructions(shows_channels(params)),
    }


def error(req_id: Any, code: int, message: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": req_id, "error": {"code": code, "message": message}}


def discover_refused(req_id: Any) -> dict[str, Any]:
    return error(
        req_id,
        METHOD_NOT_FOUND,
        f"server/discover is not served: fleetbus speaks the initialize handshake (MCP {LATEST}) "
        "so that its channel events reach the client; send initialize",
    )
