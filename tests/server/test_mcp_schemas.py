"""Output schemas are published lean (inlined, no titles) and still mean the same."""

from __future__ import annotations

from typing import Any

import jsonschema  # type: ignore[import-untyped]
import pytest
from pydantic import BaseModel

from fleetbus.plugins.runner.models import DispatchResult, StatusResult
from fleetbus.server.tools import lean_schema

STATUS: dict[str, Any] = {
    "running": 1,
    "queued": 0,
    "completed": 2,
    "failed": 0,
    "blocked": 0,
    "cancelled": 0,
    "timeout": 0,
    "total": 3,
    "frozen": False,
    "lanes": {"total": {"running": 1, "limit": 8}, "codex": {"running": 1, "limit": None}},
    "backoff": {},
    "runs": [
        {
            "run_id": "r1",
            "workspace": "a/b/c",
            "agent": "codex",
            "model": None,
            "priority": "medium",
            "status": "running",
            "reason": "",
            "pid": 42,
            "created_at": 1.0,
            "started_at": 2.0,
            "ended_at": None,
            "exit_code": None,
            "log": "/x/output.log",
            "usage": None,
        }
    ],
}


def mutations(doc: dict[str, Any]) -> list[dict[str, Any]]:
    bad = []
    for key in ("running", "lanes", "runs", "frozen"):
        broken = dict(doc)
        broken[key] = "not the right type"
        bad.append(broken)
    missing = dict(doc)
    del missing["total"]
    bad.append(missing)
    wrong_run = {**doc, "runs": [{**doc["runs"][0], "priority": "urgent"}]}
    bad.append(wrong_run)
    return bad


@pytest.mark.parametrize(
    ("model", "good"),
    [
        (StatusResult, STATUS),
        (
            DispatchResult,
            {"run_id": "r1", "status": "queued", "reason": "frozen", "queue_position": 1},
        ),
    ],
)
def test_lean_schema_accepts_and_rejects_what_the_full_one_does(
    model: type[BaseModel], good: dict[str, Any]
) -> None:
    full = model.model_json_schema()
    lean = lean_schema(full)
    assert "$defs" not in str(lean) and "'title'" not in str(lean)
    jsonschema.validate(good, full)
    jsonschema.validate(good, lean)
    for bad in mutations(good) if model is StatusResult else [{**good, "status": "nope"}]:
        for schema in (full, lean):
            with pytest.raises(jsonschema.ValidationError):
                jsonschema.validate(bad, schema)


def test_a_property_named_title_survives_and_recursion_is_left_alone() -> None:
    class Doc(BaseModel):
        title: str

    lean = lean_schema(Doc.model_json_schema())
    assert lean["properties"]["title"] == {"type": "string"}
    assert lean["required"] == ["title"]

    class Node(BaseModel):
        children: list[Node] = []

    recursive = Node.model_json_schema()
    assert lean_schema(recursive) == recursive
