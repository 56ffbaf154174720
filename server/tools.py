"""The MCP tool list, built from the hub's exposed actions without the MCP SDK.

The hub publishes it into the home at startup (before the SDK is loaded), so a relay can
answer `tools/list` as soon as a starting hub listens; the SDK session serves the same
list (`FleetMCP.tools`). Each tool is the wire form: camelCase keys, no null members.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import anyio
from pydantic import BaseModel, ConfigDict, Field

WATCH_TOOL = "fleetbus_watch"


def tool_name(action: str) -> str:
    """`runner.dispatch` -> `runner_dispatch` (Claude's API rejects dots in tool names)."""
    return action.replace(".", "_")


class WatchInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    run_ids: list[str] = Field(
        default_factory=list, max_length=100, description="Runs to wait for."
    )
    task_ids: list[str] = Field(
        default_factory=list, max_length=100, description="Tasks to wait for (agentic service)."
    )
    timeout_s: float = Field(
        60, ge=0, le=100, description="Return after this many seconds at most."
    )


WATCH_DESCRIPTION = (
    "Wait until any of the given runs ends (completed, failed, blocked, cancelled or timeout) "
    "and return how they stand; returns at the latest after timeout_s (at most 100 s), with "
    "progress notifications while it waits."
)


class _Recursive(Exception):
    pass


def lean_schema(schema: dict[str, Any]) -> dict[str, Any]:
    """The same constraints, cheaper for a client to check on every result: `$defs`
    inlined, `anyOf [X, null]` as a type list, titles dropped. A schema whose references
    cannot all be inlined (a recursive model) is returned unchanged."""
    defs = schema.get("$defs", {})

    def walk(node: Any, seen: frozenset[str]) -> Any:
        if isinstance(node, list):
            return [walk(v, seen) for v in node]
        if not isinstance(node, dict):
            return node
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/") and len(node) == 1:
            name = ref.removeprefix("#/$defs/")
            if name in seen or name not in defs:
                raise _Recursive
            return walk(defs[name], seen | {name})
        out: dict[str, Any] = {}
        for key, value in node.items():
            if key in ("$defs", "title"):
                continue
            if key in ("properties", "patternProperties") and isinstance(value, dict):
                out[key] = {name: walk(v, seen) for name, v in value.items()}
            else:
                out[key] = walk(value, seen)
        any_of = out.get("anyOf")
        if isinstance(any_of, list) and all(
            isinstance(x, dict) and set(x) == {"type"} and isinstance(x["type"], str)
            for x in any_of
        ):
            del out["anyOf"]
            out["type"] = [x["type"] for x in any_of]
        return out

    try:
        lean = dict(walk(schema, frozenset()))
    except _Recursive:
        return schema
    return schema if "$ref" in json.dumps(lean) else lean  # a reference left: keep $defs


def object_schema(schema: dict[str, Any] | None) -> dict[str, Any]:
    """MCP wants an object at the root of an input schema."""
    if not schema or schema.get("type") != "object":
        return {"type": "object", "properties": {}}
    return schema


def tool_list(actions: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every exposed action (as the bus lists it) as a tool, by name, then fleetbus_watch."""
    tools: list[dict[str, Any]] = []
    for a in sorted(actions, key=lambda a: tool_name(a["name"])):
        tool: dict[str, Any] = {
            "name": tool_name(a["name"]),
            "description": a["description"] or a["name"],
            "inputSchema": object_schema(a["input_schema"]),
            "annotations": {
                "title": a["name"],
                "readOnlyHint": not a["mutating"],
                "destructiveHint": bool(a["destructive"]),
            },
        }
        if (a["output_schema"] or {}).get("type") == "object":
            tool["outputSchema"] = lean_schema(a["output_schema"])
        tools.append(tool)
    tools.append(
        {
            "name": WATCH_TOOL,
            "description": WATCH_DESCRIPTION,
            "inputSchema": WatchInput.model_json_schema(),
            "annotations": {
                "title": "fleetbus watch",
                "readOnlyHint": True,
                "destructiveHint": False,
            },
        }
    )
    return tools


async def builtin_tool_list() -> list[dict[str, Any]]:
    """The tools of the built-in plugins alone (what `default-tools.json` holds)."""
    import tempfile

    from fleetbus.bus.hub import Hub

    with tempfile.TemporaryDirectory(prefix="fb-tools-") as tmp:
        env = {"FLEETBUS_HOME": tmp, "XDG_CONFIG_HOME": tmp, "PATH": ""}
        hub = Hub(Path(tmp) / "home", env=env, entry_points=False, serve_socket=False)
        async with anyio.create_task_group() as tg:
            await tg.start(hub.run)
            tools = tool_list(hub.bus.list_actions(exposed_only=True))
            hub.request_stop()
    return tools


def main(argv: list[str] | None = None) -> int:
    """`python -m fleetbus.server.tools [--write]`: check (or write) default-tools.json."""
    from .relay import DEFAULT_TOOLS

    args = sys.argv[1:] if argv is None else argv
    text = json.dumps({"tools": anyio.run(builtin_tool_list)}, indent=1) + "\n"
    if args == ["--write"]:
        DEFAULT_TOOLS.write_text(text)
        return 0
    if DEFAULT_TOOLS.read_text() != text:
        print(f"{DEFAULT_TOOLS.name} is stale: run python -m fleetbus.server.tools --write")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
