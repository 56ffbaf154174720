"""The docs are checked: the README's plugin example is the one the tests install, and every
hook is documented with its exact signature."""

from __future__ import annotations

import importlib.util
import inspect
import re
from pathlib import Path

from fleetbus.bus import hookspecs
from fleetbus.bus.plugins import HOOK_NAMES

ROOT = Path(__file__).resolve().parent.parent
README = (ROOT / "README.md").read_text()


def test_readme_plugin_example_is_the_tested_hello_plugin() -> None:
    hello_tests = ROOT / "tests" / "bus" / "test_hello_plugin.py"
    spec = importlib.util.spec_from_file_location("hello_plugin_tests", hello_tests)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    HELLO_PLUGIN = module.HELLO_PLUGIN

    def norm(code: str) -> str:
        return re.sub(r"\n{2,}", "\n\n", code).strip()  # blank-line style aside

    blocks = re.findall(r"```python\n(.*?)```", README, re.S)
    assert norm(HELLO_PLUGIN) in [norm(b) for b in blocks]


def test_every_hook_is_in_the_readme_with_its_signature() -> None:
    for name in sorted(HOOK_NAMES):
        params = ", ".join(inspect.signature(getattr(hookspecs, name)).parameters)
        assert f"`{name}({params})`" in README, f"README lacks hook `{name}({params})`"


def test_quick_start_has_exactly_two_commands() -> None:
    section = README.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```sh\n(.*?)```", section, re.S)
    assert len(commands) == 2
    assert all(len(c.strip().splitlines()) == 1 for c in commands)
    assert "fleetbus demo" in commands[0] and commands[1].strip() == "scripts/test"
    assert "pytest" in (ROOT / "scripts" / "test").read_text()


def test_ci_runs_the_readme_test_command() -> None:
    ci = (ROOT / ".ci" / "run").read_text()
    section = README.split("## Quick start", 1)[1]
    test_command = re.findall(r"```sh\n(.*?)```", section, re.S)[1].strip()
    assert any(line.strip() == test_command for line in ci.splitlines()), (
        f".ci/run does not run `{test_command}`"
    )
