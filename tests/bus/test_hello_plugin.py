"""The issue's acceptance test, as a new plugin author would do it.

Write a plugin package, install it with real pip, and use it through the real `fleetbus`
command: its action is listed, validated and called on an autostarted hub; its config
section is read from the user's file and validated; the allow and deny lists hide it;
broken plugins stop the hub from starting with one clear line.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fleetbus.bus.lock import is_locked, read_pid
from fleetbus.bus.paths import Home
from fleetbus.testing.processes import alive, one_line_error, wait_for

pytestmark = pytest.mark.slow

Cli = Callable[..., subprocess.CompletedProcess[str]]

HELLO_PLUGIN = '''\
from pydantic import BaseModel, ConfigDict, Field
from fleetbus.bus import ConfigSection, hookimpl

class HelloConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    greeting: str = Field("hello", description="The word said before the name.")

HELLO = ConfigSection("hello", HelloConfig, "Settings of the hello plugin.")

class Greet(BaseModel):
    name: str

class Greeting(BaseModel):
    text: str

@hookimpl
def register_config(register):
    register(HELLO)

@hookimpl
def register_actions(register, hub):
    @register("hello.greet", exposed=True)
    async def greet(req: Greet) -> Greeting:
        """Greet someone by name."""
        return Greeting(text=f"{hub.config[HELLO].greeting} {req.name}")
'''

BROKEN_PLUGIN = """\
raise ImportError("this plugin needs the package 'nothing_here', which is not installed")
"""

TYPO_PLUGIN = '''\
from fleetbus.bus import hookimpl

@hookimpl
def register_action(register):
    @register("typo.greet")
    async def greet() -> None:
        """Never registered: the hook's name is misspelled."""
'''

CLASH_PLUGIN = '''\
from fleetbus.bus import hookimpl

@hookimpl
def register_actions(register):
    @register("hub.ping")
    async def ping() -> None:
        """Takes a name the built-in hub plugin already owns."""
'''

CLASH_CONFIG_PLUGIN = """\
from pydantic import BaseModel
from fleetbus.bus import ConfigSection, hookimpl

class Mine(BaseModel):
    total_concurrency: int = 1

@hookimpl
def register_config(register):
    register(ConfigSection("dispatch", Mine, "Claims the runner's section."))
"""


# -- building and installing plugin packages -------------------------------------------------
def write_package(root: Path, dist: str, entry_point: str, module: str, source: str) -> Path:
    pkg = root / dist
    pkg.mkdir(parents=True)
    (pkg / "pyproject.toml").write_text(
        textwrap.dedent(
            f"""\
            [build-system]
            requires = ["setuptools"]
            build-backend = "setuptools.build_meta"

            [project]
            name = "{dist}"
            version = "0.1"

            [project.entry-points.fleetbus]
            {entry_point} = "{module}"

            [tool.setuptools]
            py-modules = ["{module}"]
            """
        )
    )
    (pkg / f"{module}.py").write_text(source)
    return pkg


def pip_install(pkg: Path, site: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--no-deps",
            "--no-build-isolation",
            "--quiet",
            "--target",
            str(site),
            str(pkg),
        ],
        env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1", "PIP_NO_INPUT": "1"},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def install_all(root: Path, packages: dict[str, tuple[str, str, str]]) -> dict[str, Path]:
    """Build and pip-install each package into its own target dir, concurrently."""
    sites = {}
    procs = {}
    try:
        for dist, (entry_point, module, source) in packages.items():
            pkg = write_package(root / "src", dist, entry_point, module, source)
            sites[dist] = root / "site" / dist
            procs[dist] = pip_install(pkg, sites[dist])
        for dist, proc in procs.items():
            out, err = proc.communicate(timeout=180)
            assert proc.returncode == 0, f"pip install of {dist} failed:\n{out}\n{err}"
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return sites


@pytest.fixture(scope="module")
def hello_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("hello")
    sites = install_all(root, {"hello-plugin": ("hello", "hello_plugin", HELLO_PLUGIN)})
    site = sites["hello-plugin"]
    assert (site / "hello_plugin.py").read_text() == HELLO_PLUGIN
    assert (site / "hello_plugin-0.1.dist-info" / "entry_points.txt").exists()
    return site


@pytest.fixture(scope="module")
def bad_sites(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("bad")
    return install_all(
        root,
        {
            "broken-plugin": ("broken", "broken_plugin", BROKEN_PLUGIN),
            "typo-plugin": ("typo", "typo_plugin", TYPO_PLUGIN),
            "clash-plugin": ("clash", "clash_plugin", CLASH_PLUGIN),
            "clashcfg-plugin": ("clashcfg", "clashcfg_plugin", CLASH_CONFIG_PLUGIN),
        },
    )


# -- helpers ---------------------------------------------------------------------------------
def with_site(env: dict[str, str], site: Path) -> dict[str, str]:
    """The environment a user gets with `PYTHONPATH=<site>` (ahead of any existing entry)."""
    paths = [str(site)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    return {"PYTHONPATH": os.pathsep.join(paths)}


def stop_and_wait(cli: Cli, home: Path, **env: str) -> None:
    """`fleetbus stop`, then wait until the hub's process is gone."""
    pid = read_pid(Home(home).lock)
    assert pid is not None
    proc = cli("stop", **env)
    assert proc.returncode == 0, proc.stderr
    assert wait_for(lambda: not alive(pid)), f"hub {pid} still runs after `fleetbus stop`"


def plugins_json(cli: Cli, **env: str) -> dict[str, dict[str, Any]]:
    proc = cli("plugins", "--json", **env)
    assert proc.returncode == 0, proc.stderr
    data = json.loads(proc.stdout)
    return {
        "loaded": {p["name"]: p for p in data["plugins"]},
        "skipped": {s["name"]: s["why"] for s in data["skipped"]},
    }


def action_names(cli: Cli, **env: str) -> set[str]:
    proc = cli("actions", "--json", **env)
    assert proc.returncode == 0, proc.stderr
    return {a["name"] for a in json.loads(proc.stdout)}


# -- the acceptance test ---------------------------------------------------------------------
def test_hello_plugin_end_to_end(
    cli: Cli, env: dict[str, str], home: Path, hello_site: Path
) -> None:
    user = with_site(env, hello_site)

    proc = cli("actions", "--json", **user)
    assert proc.returncode == 0, proc.stderr
    actions = {a["name"]: a for a in json.loads(proc.stdout)}
    assert "hello.greet" in actions, sorted(actions)
    greet = actions["hello.greet"]
    assert greet["exposed"] is True
    assert greet["plugin"] == "hello"
    assert greet["description"] == "Greet someone by name."
    assert greet["input_schema"]["required"] == ["name"]
    assert greet["input_schema"]["properties"]["name"]["type"] == "string"
    assert "text" in greet["output_schema"]["properties"]
    assert "hub.ping" in actions  # the built-ins are still there

    exposed = cli("actions", "--json", "--exposed", **user)
    assert exposed.returncode == 0, exposed.stderr
    assert "hello.greet" in {a["name"] for a in json.loads(exposed.stdout)}

    proc = cli("call", "hello.greet", '{"name":"ada"}', **user)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"text": "hello ada"}

    proc = cli("call", "hello.greet", "{}", **user)
    assert proc.returncode == 1, proc
    err = one_line_error(proc)
    assert "hello.greet" in err and "name" in err, err

    proc = cli("call", "nope.nothing", "{}", **user)
    assert proc.returncode == 1, proc
    assert "nope.nothing" in one_line_error(proc)

    plugins = plugins_json(cli, **user)
    assert plugins["loaded"]["hello"]["source"] == "entry point"
    assert plugins["loaded"]["hello"]["version"] == "0.1"
    assert plugins["loaded"]["hello"]["module"] == "hello_plugin"
    assert plugins["loaded"]["hello"]["hooks"] == ["register_actions", "register_config"]
    assert "hub" in plugins["loaded"]

    text = cli("plugins", **user)
    assert text.returncode == 0, text.stderr
    assert any(ln.startswith("hello 0.1") for ln in text.stdout.splitlines()), text.stdout


def test_the_plugins_config_section(
    cli: Cli, env: dict[str, str], home: Path, hello_site: Path
) -> None:
    config = home.parent / "fleetbus.yaml"
    user = {**with_site(env, hello_site), "FLEETBUS_CONFIG": str(config)}
    config.write_text("hello:\n  greeting: [hi]\n")
    err = failed_start(cli, home, hello_site, env, FLEETBUS_CONFIG=str(config))
    assert f"{config}: hello.greeting: Input should be a valid string (plugin 'hello')" in err, err

    config.write_text("hello:\n  greting: hi\n")
    err = failed_start(cli, home, hello_site, env, FLEETBUS_CONFIG=str(config))
    assert f"{config}: hello.greting: unknown key; did you mean 'greeting'?" in err, err
    assert "(plugin 'hello')" in err, err

    config.write_text("helo:\n  greeting: hi\n")
    err = failed_start(cli, home, hello_site, env, FLEETBUS_CONFIG=str(config))
    assert f"{config}: helo: unknown key; did you mean 'hello'?" in err, err
    assert "(known keys: agentic, agents, dispatch, fleet, hello, hub, sync)" in err, err

    config.write_text("hello:\n  greeting: hi\n")
    proc = cli("call", "hello.greet", '{"name":"ada"}', **user)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == {"text": "hi ada"}
    stop_and_wait(cli, home, **user)

    # disabled, its section is set aside and reported, not refused as unknown
    config.write_text("hello:\n  greeting: [not, checked]\n")
    denied = {**user, "FLEETBUS_DISABLE_PLUGINS": "hello"}
    proc = cli("call", "hub.ping", "{}", **denied)
    assert proc.returncode == 0, proc.stderr
    assert (
        f"{config}: config section 'hello' is not checked: plugin 'hello' is disabled by "
        "FLEETBUS_DISABLE_PLUGINS"
    ) in Home(home).log.read_text()


def test_disable_plugins_hides_it(
    cli: Cli, env: dict[str, str], home: Path, hello_site: Path
) -> None:
    user = with_site(env, hello_site)
    assert "hello.greet" in action_names(cli, **user)
    stop_and_wait(cli, home, **user)

    denied = {**user, "FLEETBUS_DISABLE_PLUGINS": "hello"}
    assert "hello.greet" not in action_names(cli, **denied)
    plugins = plugins_json(cli, **denied)
    assert "hello" not in plugins["loaded"]
    assert "FLEETBUS_DISABLE_PLUGINS" in plugins["skipped"]["hello"]
    proc = cli("call", "hello.greet", '{"name": "ada"}', **denied)
    assert proc.returncode == 1, proc
    assert "hello.greet" in one_line_error(proc)


def test_empty_plugin_list_loads_no_entry_points(
    cli: Cli, env: dict[str, str], home: Path, hello_site: Path
) -> None:
    none = {**with_site(env, hello_site), "FLEETBUS_PLUGINS": ""}
    plugins = plugins_json(cli, **none)
    assert {p["source"] for p in plugins["loaded"].values()} == {"builtin"}
    assert "hello" in plugins["skipped"]
    assert "hello.greet" not in action_names(cli, **none)
    assert "hub.ping" in action_names(cli, **none)

    stop_and_wait(cli, home, **none)
    listed = {**none, "FLEETBUS_PLUGINS": "hello"}
    assert "hello.greet" in action_names(cli, **listed)


# -- broken plugins stop the hub from starting -----------------------------------------------
def failed_start(cli: Cli, home: Path, site: Path, env: dict[str, str], **extra: str) -> str:
    proc = cli("call", "hub.ping", "{}", **with_site(env, site), **extra)
    assert proc.returncode == 2, proc
    err = one_line_error(proc)
    assert not is_locked(Home(home).lock), "a hub that failed to start must not keep running"
    assert not Home(home).socket.exists()
    return err


def test_plugin_that_fails_to_import(
    cli: Cli, env: dict[str, str], home: Path, bad_sites: dict[str, Path]
) -> None:
    site = bad_sites["broken-plugin"]
    err = failed_start(cli, home, site, env)
    assert "'broken'" in err, err
    assert "nothing_here" in err, err
    assert "FLEETBUS_DISABLE_PLUGINS=broken" in err, err

    # the suggestion works
    proc = cli("call", "hub.ping", "{}", FLEETBUS_DISABLE_PLUGINS="broken", **with_site(env, site))
    assert proc.returncode == 0, proc.stderr


def test_plugin_with_a_misspelled_hook(
    cli: Cli, env: dict[str, str], home: Path, bad_sites: dict[str, Path]
) -> None:
    err = failed_start(cli, home, bad_sites["typo-plugin"], env)
    assert "'typo'" in err, err
    assert "register_action'" in err and "register_actions" in err, err


def test_plugin_claiming_a_used_config_section(
    cli: Cli, env: dict[str, str], home: Path, bad_sites: dict[str, Path]
) -> None:
    err = failed_start(cli, home, bad_sites["clashcfg-plugin"], env)
    assert "config section 'dispatch' is registered twice" in err, err
    assert "plugin 'runner'" in err and "plugin 'clashcfg'" in err, err


def test_plugin_taking_a_used_action_name(
    cli: Cli, env: dict[str, str], home: Path, bad_sites: dict[str, Path]
) -> None:
    err = failed_start(cli, home, bad_sites["clash-plugin"], env)
    assert "hub.ping" in err, err
    assert "'hub'" in err and "'clash'" in err, err
