"""The runner's modules read along the data path and never reach back up.

Each module of the runner package may import only modules below it in `LAYERS` (lowest
first): leaf modules, the run model, the queue's SQL, the live state, the session policy,
launching and supervising processes, the scheduler, the read views, then the service.
A new module must take its place in the list.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

RUNNER = Path(__file__).resolve().parents[3] / "plugins" / "runner"
PACKAGE = "fleetbus.plugins.runner"
LAYERS = [
    "agents",
    "config",
    "models",
    "schema",
    "workspaces",
    "processes",
    "questions",
    "followup",
    "clock",
    "runs",
    "limits",
    "queue",
    "events",
    "state",
    "sessions",
    "validation",
    "launch",
    "supervisor",
    "scheduler",
    "status",
    "service",
    "__init__",
]
MAX_LINES = 420  # "about 400"


def modules() -> list[str]:
    return sorted(p.stem for p in RUNNER.glob("*.py"))


def runner_imports(module: str) -> set[str]:
    """The runner modules that `module` imports (relative or absolute)."""
    tree = ast.parse((RUNNER / f"{module}.py").read_text())
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module is None:  # from . import a, b
                found.update(alias.name for alias in node.names)
            elif node.level == 1 and node.module is not None:
                found.add(node.module.split(".")[0])
            elif node.level == 0 and (node.module or "").startswith(PACKAGE + "."):
                found.add((node.module or "").removeprefix(PACKAGE + ".").split(".")[0])
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith(PACKAGE + "."):
                    found.add(alias.name.removeprefix(PACKAGE + ".").split(".")[0])
    return found


def test_every_module_has_a_place_in_the_layers() -> None:
    assert set(modules()) == set(LAYERS)


@pytest.mark.parametrize("module", LAYERS)
def test_a_module_imports_only_modules_below_it(module: str) -> None:
    level = LAYERS.index(module)
    above = sorted(m for m in runner_imports(module) if LAYERS.index(m) >= level)
    assert above == [], f"{module} reaches up to {above}"


@pytest.mark.parametrize("module", LAYERS)
def test_a_module_stays_small_and_says_what_it_holds(module: str) -> None:
    source = (RUNNER / f"{module}.py").read_text()
    assert len(source.splitlines()) <= MAX_LINES
    assert ast.get_docstring(ast.parse(source)), f"{module} has no docstring"
