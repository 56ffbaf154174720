"""What a caller may ask of the runner: dispatch requests, agent and workspace names.

Bad input is `InvalidInput` naming the field; an agent whose program is not installed
is `Refused`. Reads the manifest and the file system (the workspace root, `PATH`); never
the database, the bus or the live state.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fleetbus.bus import Context, InvalidInput, Refused

from .config import AgentSpec, DispatchSpec
from .models import PRIORITIES, DispatchInput
from .runs import MAX_ARG_PROMPT, new_run_id
from .workspaces import BadWorkspace, normalize, resolve

_FOUND: dict[tuple[str, str], str] = {}
_MISSING: dict[tuple[str, str], float] = {}  # (program, PATH) -> when it was not found
MISSING_TTL = 2.0  # seconds `installed` trusts that a program is still missing
_PROGRAMS: dict[tuple[str, str], str | None] = {}  # (command's first word, root) -> program


def which(program: str, path: str) -> str | None:
    """`shutil.which`, remembering what it found (dispatch checks the agent's program on
    every call; a program installed later is found on the next call)."""
    hit = _FOUND.get((program, path))
    if hit is not None and os.access(hit, os.X_OK):
        return hit
    found = shutil.which(program, path=path)
    if found is not None:
        _FOUND[(program, path)] = found
    return found


def bad(where: str, field: str, message: str) -> InvalidInput:
    return InvalidInput.from_errors(where, [{"field": field, "message": message}])


def workspace_name(
    value: str | None, root: Path, where: str, field: str = "workspace"
) -> str | None:
    """The canonical name of a workspace the caller gave, or InvalidInput naming `field`."""
    if value is None:
        return None
    try:
        return normalize(value, root)
    except BadWorkspace as e:
        raise bad(where, field, str(e)) from None


def agent_spec(agents: Mapping[str, AgentSpec], name: str) -> AgentSpec:
    spec = agents.get(name)
    if spec is None:
        known = ", ".join(sorted(agents)) or "none"
        raise bad("runner.dispatch", "agent", f"unknown agent {name!r} (known: {known})")
    return spec


@dataclass(frozen=True)
class Checked:
    """A dispatch request that passed: its agent, model and workspace."""

    spec: AgentSpec
    model: str | None
    workspace: str  # the canonical name
    path: Path
    prompt_limit: int  # the largest prompt the agent takes here (merged prompts too)


def check_dispatch(
    req: DispatchInput,
    agents: Mapping[str, AgentSpec],
    dispatch: DispatchSpec,
    root: Path,
    path_env: str,
) -> Checked:
    """`req` checked against the manifest, or InvalidInput / Refused saying what is wrong."""

    def fault(field: str, message: str) -> InvalidInput:
        return bad("runner.dispatch", field, message)

    spec = agent_spec(agents, req.agent)
    try:
        model = spec.resolve_model(req.model)
    except ValueError as e:
        raise fault("model", str(e)) from None
    if model is not None and (model.startswith("-") or "\x00" in model):
        raise fault("model", "must not start with '-' or contain a NUL byte")
    if "\x00" in req.prompt:
        raise fault("prompt", "contains a NUL byte")
    if not req.prompt.strip():
        raise fault("prompt", "must not be empty")
    size = len(req.prompt.encode())
    limit = dispatch.max_prompt_bytes
    if size > limit:
        raise fault("prompt", f"is {size} bytes; the limit is {limit} (dispatch.max_prompt_bytes)")
    if spec.prompt == "arg":
        if size > MAX_ARG_PROMPT:
            raise fault(
                "prompt",
                f"is {size} bytes, too long for a command-line argument ({MAX_ARG_PROMPT}); "
                "give the agent `prompt: stdin` or `prompt: file`",
            )
        if req.prompt.startswith("-"):
            raise fault(
                "prompt",
                f"starts with '-', which {req.agent} could read as an option; start it with a word",
            )
    if req.idempotency_key is not None and "\x00" in req.idempotency_key:
        raise fault("idempotency_key", "contains a NUL byte")
    try:
        name = normalize(req.workspace, root)
        path = resolve(name, root, create=False)
    except BadWorkspace as e:
        raise fault("workspace", str(e)) from None
    program = spec.render("x", "x", str(path), model, sys.executable)[0]
    if which(program, path_env) is None:
        raise Refused(
            f"agent {req.agent!r} cannot run here: {program!r} is not installed or not on PATH; "
            "install it, or choose another agent"
        )
    if spec.prompt == "arg":
        limit = min(limit, MAX_ARG_PROMPT)
    return Checked(spec, model, name, path, limit)


def installed(spec: AgentSpec, env: Mapping[str, str], root: Path) -> bool:
    """Whether the agent's program is on the PATH of `env` (a program installed later is
    found on the next call). `runner.status` asks it for every agent on every call, so
    the program's name is worked out once per command template."""
    key = (spec.command[0] if spec.command else "", str(root))
    program = _PROGRAMS.get(key, "")
    if program == "":
        try:
            argv = spec.render("x", "x", str(root), None, sys.executable)
        except ValueError:
            argv = []
        program = _PROGRAMS[key] = argv[0] if argv else None
    if program is None:
        return False
    path = path_of(env)
    missing_since = _MISSING.get((program, path))
    if missing_since is not None and time.monotonic() - missing_since < MISSING_TTL:
        return False  # looked for a moment ago (shutil.which stats every PATH entry)
    if which(program, path) is not None:
        _MISSING.pop((program, path), None)
        return True
    _MISSING[(program, path)] = time.monotonic()
    return False


def path_of(env: Mapping[str, str]) -> str:
    return env.get("PATH", os.defpath)


def check_and_create(
    req: DispatchInput,
    agents: Mapping[str, AgentSpec],
    dispatch: DispatchSpec,
    root: Path,
    path_env: str,
) -> Checked:
    """`check_dispatch`, then the workspace made (blocking: call it in a worker thread)."""
    checked = check_dispatch(req, agents, dispatch, root, path_env)
    name = checked.workspace
    try:
        resolve(name, root, create=True)
    except BadWorkspace as e:
        raise bad("runner.dispatch", "workspace", str(e)) from None
    except OSError as e:
        raise Refused(f"cannot create workspace {name}: {e.strerror}") from e
    return checked


def new_row(
    req: DispatchInput, ctx: Context, checked: Checked, mode: str, now: float
) -> dict[str, Any]:
    """The columns of a new run that do not depend on what the session policy decides."""
    return {
        "id": new_run_id(),
        "workspace": checked.workspace,
        "agent": req.agent,
        "model": checked.model,
        "prompt": req.prompt,
        "priority": PRIORITIES[req.priority],
        "session_mode": mode,
        "timeout_s": (req.timeout_minutes or checked.spec.timeout_minutes) * 60,
        "idempotency_key": req.idempotency_key,
        "origin": json.dumps(dict(ctx.origin)) if ctx.origin else None,
        "created_at": now,
    }
