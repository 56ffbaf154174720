"""The manifest: the runner's section models, the YAML loader (merge, blame, one-line
errors), sections registered by plugins, and the schemas."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from fleetbus.bus.config import CORE, ConfigSection, ConfigSections
from fleetbus.bus.errors import ConfigError, StartupError
from fleetbus.bus.manifests import (
    HUB,
    core_sections,
    load_manifest,
    main,
    merge,
    schema_text,
    schemas,
    user_config_path,
    write_schemas,
)
from fleetbus.plugins.runner.config import AGENTS, DISPATCH, AgentSpec, UsageSpec

SCHEMA_DIR = Path(__file__).resolve().parents[2] / "manifests" / "schema"
PY = "/usr/bin/python3"
WS = "/tmp/ws"


def env_for(tmp_path: Path, **extra: str) -> dict[str, str]:
    """An environment whose default config path is inside tmp_path (and missing)."""
    return {"HOME": str(tmp_path / "home"), **extra}


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def config_error(path: Path) -> str:
    with pytest.raises(ConfigError) as info:
        load_manifest(path, env={})
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: ")
    return message


# --- built-ins ---------------------------------------------------------------------------


def test_builtin_manifest_loads(tmp_path: Path) -> None:
    manifest = load_manifest(env=env_for(tmp_path))
    assert set(manifest.agents) == {"codex", "claude", "gemini", "shell", "fake"}
    assert manifest.dispatch.total_concurrency == 8
    assert manifest.dispatch.workspace_root is None
    assert manifest.dispatch.resolved_workspace_root(tmp_path) == tmp_path / "workspaces"
    assert manifest.dispatch.drain_interval == 30
    assert manifest.dispatch.kill_grace == 30
    assert manifest.dispatch.max_prompt_bytes == 1048576
    assert manifest.dispatch.start_frozen is False
    assert manifest.hub.idle_timeout == 600
    assert list(manifest) == ["agentic", "agents", "dispatch", "fleet", "hub", "sync"]
    assert manifest[AGENTS] is manifest.agents and manifest[DISPATCH] is manifest.dispatch
    assert manifest[HUB].idle_timeout == 600
    assert (manifest.owner("agents"), manifest.owner("dispatch")) == ("runner", "runner")
    assert manifest.owner("hub") == CORE and manifest.ignored == {}
    assert manifest.agents["codex"].limits() == (2, {})
    assert manifest.agents["fake"].limits() == (4, {})


def test_builtin_agents_render(tmp_path: Path) -> None:
    agents = load_manifest(env=env_for(tmp_path)).agents
    render = {name: spec.render("do it", None, WS, None, PY) for name, spec in agents.items()}
    assert render == {
        "codex": ["codex", "exec", "--full-auto", "--skip-git-repo-check", "-"],
        "claude": ["claude", "-p", "--output-format", "json", "--permission-mode", "acceptEdits"],
        "gemini": ["gemini", "--yolo", "-p", "do it"],
        "shell": ["sh", "-s"],
        "fake": [PY, "-m", "fleetbus.testing.fake_agent", "do it"],
    }
    assert agents["codex"].render("x", None, WS, "gpt-5", PY)[-2:] == ["-m", "gpt-5"]
    assert agents["claude"].render("x", None, WS, "opus", PY)[-2:] == ["--model", "opus"]
    assert agents["gemini"].render("x", None, WS, "pro", PY) == [
        "gemini",
        "--yolo",
        "-p",
        "x",
        "-m",
        "pro",
    ]
    assert {n for n, a in agents.items() if a.prompt == "stdin"} == {"codex", "claude", "shell"}
    assert agents["codex"].env == ["OPENAI_API_KEY", "CODEX_HOME", "HOME", "PATH"]


def test_builtin_usage_regexes(tmp_path: Path) -> None:
    agents = load_manifest(env=env_for(tmp_path)).agents
    codex, claude, fake = agents["codex"], agents["claude"], agents["fake"]
    assert codex.usage is not None and claude.usage is not None and fake.usage is not None
    assert codex.usage.extract("done\ntokens used: 1234\n").total_tokens == 1234
    assert codex.usage.extract("done\ntokens used\n12,345\n").tokens == 12345
    result = json.dumps(
        {
            "type": "result",
            "total_cost_usd": 0.0123,
            "usage": {"input_tokens": 11, "cache_read_input_tokens": 99, "output_tokens": 22},
        }
    )
    usage = claude.usage.extract(result)
    assert (usage.input_tokens, usage.output_tokens, usage.cost_usd) == (11, 22, 0.0123)
    assert usage.tokens == 33
    line = "fleetbus-usage: input_tokens=5 output_tokens=7 cost_usd=0.25"
    usage = fake.usage.extract(f"fake agent started pid=1\n{line}\n")
    assert (usage.input_tokens, usage.output_tokens, usage.cost_usd) == (5, 7, 0.25)
    assert fake.usage.extract("nothing here").tokens is None
    assert UsageSpec().extract("tokens used: 5").tokens is None
    assert re.search(str(codex.usage_limit_pattern), "You've hit your usage limit.")
    assert re.search(str(claude.usage_limit_pattern), "Claude AI usage limit reached|1700000000")
    assert re.search(str(fake.usage_limit_pattern), "FAKE USAGE LIMIT reached, try again later")


# --- placeholders and the agent model ----------------------------------------------------


def agent(**fields: object) -> AgentSpec:
    return AgentSpec.model_validate(fields)


def agent_error(**fields: object) -> str:
    with pytest.raises(ValidationError) as info:
        agent(**fields)
    return str(info.value)


def test_placeholder_must_be_whole_argument() -> None:
    message = agent_error(command=["tool", "--prompt={prompt}"])
    assert "placeholders replace whole arguments only" in message
    assert "split '--prompt={prompt}' into two arguments" in message


def test_placeholder_with_trailing_newline_is_not_whole() -> None:
    message = agent_error(command=["tool", "{prompt}", "{workspace}\n"])
    assert "placeholders replace whole arguments only" in message
    assert "split '{prompt}.txt' into two arguments" in agent_error(
        command=["tool", "{prompt}.txt"]
    )


def test_unknown_placeholder_lists_known_ones() -> None:
    message = agent_error(command=["tool", "{promt}"])
    assert "unknown placeholder '{promt}'" in message
    assert "{prompt}, {prompt_file}, {workspace}, {model}, {python}" in message
    assert "unknown placeholder '{nope}'" in agent_error(
        command=["tool", "{prompt}"], model_args=["{nope}"]
    )


def test_other_braces_are_plain_text() -> None:
    spec = agent(command=["sh", "-c", 'echo "{x} {}" ${HOME}', "{prompt}"])
    assert spec.render("p", None, WS, None, PY) == ["sh", "-c", 'echo "{x} {}" ${HOME}', "p"]


def test_prompt_mode_consistency() -> None:
    assert "prompt: arg needs a '{prompt}'" in agent_error(command=["tool"])
    assert "prompt: file needs a '{prompt_file}'" in agent_error(command=["tool"], prompt="file")
    assert "prompt: stdin feeds the prompt on stdin" in agent_error(
        command=["tool", "{prompt}"], prompt="stdin"
    )
    spec = agent(command=["tool", "--file", "{prompt_file}", "-C", "{workspace}"], prompt="file")
    assert spec.render(None, "/tmp/p.md", WS, None, PY) == [
        "tool",
        "--file",
        "/tmp/p.md",
        "-C",
        WS,
    ]


def test_followup_context_mode(tmp_path: Path) -> None:
    assert agent(command=["tool", "{prompt}"]).context == "prompt"
    assert agent(command=["tool", "{prompt}"], context="file").context == "file"
    assert agent(command=["tool", "{prompt}"], context="none").context == "none"
    assert "'prompt', 'file' or 'none'" in agent_error(command=["tool", "{prompt}"], context="env")
    agents = load_manifest(env=env_for(tmp_path)).agents
    # a script agent keeps its script valid: its context goes to a file
    assert {name: spec.context for name, spec in agents.items()} == {
        "codex": "prompt",
        "claude": "prompt",
        "gemini": "prompt",
        "shell": "file",
        "fake": "prompt",
    }


def test_model_placeholder_lives_in_model_args() -> None:
    assert "{model} belongs in model_args" in agent_error(command=["tool", "{prompt}", "{model}"])
    assert "{prompt} belongs in command" in agent_error(
        command=["tool", "{prompt}"], model_args=["{prompt}"]
    )


def test_render_needs_values_for_used_placeholders() -> None:
    spec = agent(command=["tool", "{prompt}"])
    with pytest.raises(ValueError, match=r"\{prompt\}"):
        spec.render(None, None, WS, None, PY)


def test_models_default_and_concurrency() -> None:
    spec = agent(
        command=["tool", "{prompt}"],
        models=["a", "b"],
        default_model="a",
        concurrency={"total": 3, "b": 1},
    )
    assert spec.limits() == (3, {"b": 1})
    assert spec.resolve_model(None) == "a"
    assert spec.resolve_model("b") == "b"
    with pytest.raises(ValueError, match="not allowed"):
        spec.resolve_model("c")
    assert agent(command=["t", "{prompt}"], concurrency={"m": 2}).limits() == (None, {"m": 2})
    assert "not in models" in agent_error(
        command=["t", "{prompt}"], models=["a"], default_model="z"
    )
    assert "not in models" in agent_error(
        command=["t", "{prompt}"], models=["a"], concurrency={"z": 1}
    )
    assert "integer >= 1" in agent_error(command=["t", "{prompt}"], concurrency=True)


def test_field_checks() -> None:
    assert "not an environment variable name" in agent_error(
        command=["t", "{prompt}"], env=["OK", "NOT-OK"]
    )
    assert "not a valid regular expression" in agent_error(
        command=["t", "{prompt}"], usage_limit_pattern="(["
    )
    assert "capture group" in agent_error(command=["t", "{prompt}"], usage={"cost_usd": r"\d+"})
    assert "HH:MM" in agent_error(command=["t", "{prompt}"], rates={"reset_utc": "6am"})
    assert "not a shell string" in agent_error(command="codex exec -")
    assert "at least 1 item" in agent_error(command=[])
    assert agent(command=["sleep", 5, "{prompt}"]).command == ["sleep", "5", "{prompt}"]


@given(
    prompt=st.text(),
    model=st.text(),
    workspace=st.text(min_size=1),
)
def test_render_never_splits_or_joins_arguments(prompt: str, model: str, workspace: str) -> None:
    spec = agent(
        command=["{python}", "-m", "tool", "{prompt}", "-C", "{workspace}"],
        model_args=["--model", "{model}"],
    )
    argv = spec.render(prompt, None, workspace, model, PY)
    assert argv == [PY, "-m", "tool", prompt, "-C", workspace, "--model", model]
    assert spec.render(prompt, None, workspace, None, PY)[3] == prompt


AWKWARD = st.text(alphabet=st.sampled_from(list(" \"';\n\t-{}\\$`é✓\x00")))


@given(prompt=AWKWARD | st.text() | st.just("--help") | st.just("{prompt}"))
def test_render_keeps_awkward_prompts_whole(prompt: str) -> None:
    argv = agent(command=["gemini", "-p", "{prompt}"]).render(prompt, None, WS, None, PY)
    assert len(argv) == 3
    assert argv[2] == prompt


# --- loading and merging -----------------------------------------------------------------


def test_user_config_path() -> None:
    assert user_config_path({"FLEETBUS_CONFIG": "/x/y.yaml", "XDG_CONFIG_HOME": "/c"}) == Path(
        "/x/y.yaml"
    )
    assert user_config_path({"XDG_CONFIG_HOME": "/c", "HOME": "/h"}) == Path(
        "/c/fleetbus/fleetbus.yaml"
    )
    assert user_config_path({"HOME": "/h"}) == Path("/h/.config/fleetbus/fleetbus.yaml")
    assert user_config_path({"HOME": "/h", "XDG_CONFIG_HOME": ""}) == Path(
        "/h/.config/fleetbus/fleetbus.yaml"
    )


def test_merge_rules() -> None:
    base = {"a": {"b": 1, "c": [1, 2], "d": {"e": 1}}, "f": 1}
    override = {"a": {"c": [3], "d": {"g": 2}, "b": None}, "f": None, "h": {"i": None, "j": 1}}
    assert merge(base, override) == {"a": {"c": [3], "d": {"e": 1, "g": 2}}, "h": {"j": 1}}
    assert base["a"] == {"b": 1, "c": [1, 2], "d": {"e": 1}}


USER_FILE = """\
agents:
  codex:
    concurrency: 5
  sleepy:
    command: ["sh", "-c", "sleep 1; echo done", "{prompt}"]
    prompt: arg
    concurrency: 2
  gemini: null
dispatch:
  workspace_root: ~/ws
hub:
  idle_timeout: 0
"""


def test_user_file_merges_over_builtins(tmp_path: Path) -> None:
    path = write(tmp_path / "fleetbus.yaml", USER_FILE)
    builtin = load_manifest(env=env_for(tmp_path))
    manifest = load_manifest(path, env={"HOME": str(tmp_path)})
    assert set(manifest.agents) == {"codex", "claude", "shell", "fake", "sleepy"}
    codex = manifest.agents["codex"]
    assert codex.concurrency == 5
    assert codex.model_dump(exclude={"concurrency"}) == builtin.agents["codex"].model_dump(
        exclude={"concurrency"}
    )
    assert manifest.agents["claude"] == builtin.agents["claude"]
    sleepy = manifest.agents["sleepy"]
    assert sleepy.limits() == (2, {})
    assert sleepy.render("hi there", None, WS, None, PY) == [
        "sh",
        "-c",
        "sleep 1; echo done",
        "hi there",
    ]
    assert manifest.dispatch.workspace_root == Path("~/ws").expanduser()
    assert manifest.dispatch.total_concurrency == 8
    assert manifest.hub.idle_timeout == 0


def test_user_file_from_environment(tmp_path: Path) -> None:
    path = write(tmp_path / "custom.yaml", "hub: {idle_timeout: 5}\n")
    assert load_manifest(env={"FLEETBUS_CONFIG": str(path)}).hub.idle_timeout == 5
    xdg = tmp_path / "xdg"
    write(xdg / "fleetbus" / "fleetbus.yaml", "hub: {idle_timeout: 7}\n")
    assert load_manifest(env={"XDG_CONFIG_HOME": str(xdg)}).hub.idle_timeout == 7
    write(tmp_path / "empty.yaml", "# nothing yet\n")
    assert load_manifest(tmp_path / "empty.yaml", env={}) == load_manifest(env=env_for(tmp_path))


def test_missing_files(tmp_path: Path) -> None:
    assert load_manifest(env=env_for(tmp_path)).agents  # default path missing: fine
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_manifest(env={"FLEETBUS_CONFIG": str(missing)})
    assert str(info.value) == f"{missing}: no such file; create it or unset FLEETBUS_CONFIG"
    with pytest.raises(ConfigError, match="no such file"):
        load_manifest(missing, env={})
    with pytest.raises(ConfigError, match="is a directory"):
        load_manifest(tmp_path, env={})


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "agents:\n  sleepy:\n    command: [sh, -c, 'sleep 1', '{prompt}']\n    prompt: bash\n",
            "agents.sleepy.prompt: Input should be 'arg', 'stdin' or 'file'",
            id="bad-enum",
        ),
        pytest.param(
            "agents:\n  codex:\n    comand: [codex]\n",
            "agents.codex.comand: unknown key; did you mean 'command'?",
            id="unknown-key",
        ),
        pytest.param(
            "dispatch:\n  total_concurrency: lots\n",
            "dispatch.total_concurrency: Input should be a valid integer",
            id="wrong-type",
        ),
        pytest.param(
            "agents:\n  codex:\n    concurrency: 0\n",
            "agents.codex.concurrency: must be an integer >= 1",
            id="bad-concurrency",
        ),
        pytest.param(
            "agents:\n  Big:\n    command: [x, '{prompt}']\n",
            "agents.Big: invalid agent name 'Big': use 1-64 lowercase letters",
            id="bad-agent-name",
        ),
        pytest.param(
            "agents:\n  gemini:\n    prompt: stdin\n",
            "agents.gemini: prompt: stdin feeds the prompt on stdin",
            id="override-breaks-builtin",
        ),
        pytest.param(
            "agents:\n  x:\n    command: [x, {prompt}]\n",
            "agents.x.command: quote placeholders in YAML",
            id="unquoted-placeholder",
        ),
        pytest.param(
            "agents:\n  x:\n    command: [x, '--prompt={prompt}']\n",
            "agents.x.command: placeholders replace whole arguments only",
            id="embedded-placeholder",
        ),
        pytest.param(
            "agents:\n  new:\n    prompt: stdin\n",
            "agents.new.command: Field required",
            id="missing-field",
        ),
        pytest.param(
            "agents:\n  codex:\n    command: [codex, exec]\n    concurrency: 2\n    bogus: 1\n",
            "agents.codex.bogus: unknown key",
            id="unknown-key-among-good-ones",
        ),
        pytest.param(
            "plugins:\n  acme: {}\n",
            "plugins: unknown key (known keys: agentic, agents, dispatch, fleet, hub, sync)",
            id="free-form-plugins-section-is-gone",
        ),
        pytest.param(
            "dispach:\n  total_concurrency: 2\n",
            "dispach: unknown key; did you mean 'dispatch'? (known keys: agentic, agents, dispatch, fleet, hub, sync)",
            id="unknown-section",
        ),
        pytest.param(
            "dispatch: 3\n",
            "dispatch: Input should be a valid dictionary or instance of DispatchSpec "
            "(plugin 'runner')",
            id="section-not-a-mapping",
        ),
        pytest.param(
            "agents:\n  codex:\n    concurrency: [1\n",
            "line 4, column 1: invalid YAML: expected ',' or ']'",
            id="yaml-syntax",
        ),
        pytest.param(
            "hub:\n  idle_timeout: 1\nhub:\n  idle_timeout: 2\n",
            "line 3, column 1: invalid YAML: duplicate key 'hub'",
            id="duplicate-key",
        ),
        pytest.param(
            "- a\n- b\n",
            "the top level must be a mapping of sections (agentic:, agents:, dispatch:, fleet:, hub:, sync:), got a list",
            id="top-level-list",
        ),
        pytest.param("just words\n", "the top level must be a mapping", id="top-level-str"),
    ],
)
def test_bad_user_file_is_one_line(tmp_path: Path, text: str, expected: str) -> None:
    path = write(tmp_path / "fleetbus.yaml", text)
    message = config_error(path)
    assert expected in message


def test_several_errors_are_summarised(tmp_path: Path) -> None:
    path = write(
        tmp_path / "fleetbus.yaml",
        "agents:\n  codex:\n    concurrency: 0\n    timeout_minutes: 0\n"
        "    env: ['1X']\n    rates: {reset_utc: '25:00'}\n",
    )
    message = config_error(path)
    assert message.count(str(path)) == 1
    assert message.count("; ") == 2
    assert message.endswith("(and 1 more)")


def test_no_traceback_escapes_for_odd_input(tmp_path: Path) -> None:
    path = tmp_path / "fleetbus.yaml"
    path.write_bytes(b"\xff\xfe\x00garbage")
    config_error(path)
    write(path, "agents: !!python/object:os.system {}\n")
    config_error(path)
    write(path, "agents:\n  ? [a, b]\n  : {}\n")
    config_error(path)


# --- schemas -----------------------------------------------------------------------------


def test_schema_files_are_current() -> None:
    stale = [
        name
        for name, schema in schemas().items()
        if not (SCHEMA_DIR / name).is_file()
        or (SCHEMA_DIR / name).read_text(encoding="utf-8") != schema_text(schema)
    ]
    assert not stale, (
        f"{', '.join(stale)} in {SCHEMA_DIR} are out of date: "
        "run `python -m fleetbus.bus.manifests --write-schemas`"
    )


def test_schemas_document_every_field() -> None:
    assert set(schemas()) == {
        "manifest.schema.json",
        "agentic.schema.json",
        "agents.schema.json",
        "dispatch.schema.json",
        "hub.schema.json",
        "sync.schema.json",
        "fleet.schema.json",
    }
    manifest = schemas()["manifest.schema.json"]
    for name, definition in manifest["$defs"].items():
        for field, prop in definition["properties"].items():
            assert prop.get("description"), f"{name}.{field} has no description"
    for field, prop in manifest["properties"].items():
        assert prop.get("description"), f"Manifest.{field} has no description"
    assert manifest["additionalProperties"] is False
    agents = schemas()["agents.schema.json"]
    assert agents["description"] == AGENTS.description
    assert agents["patternProperties"] == {
        "^[a-z0-9][a-z0-9_-]{0,63}$": {"$ref": "#/$defs/AgentSpec"}
    }
    assert schemas()["dispatch.schema.json"]["additionalProperties"] is False


def test_write_and_check_schemas(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    written = write_schemas(tmp_path / "schema")
    assert sorted(p.name for p in written) == sorted(schemas())
    assert json.loads(written[0].read_text()) == schemas()[written[0].name]
    assert main(["--check-schemas", str(tmp_path / "schema")]) == 0
    (tmp_path / "schema" / "hub.schema.json").write_text("{}\n")
    assert main(["--check-schemas", str(tmp_path / "schema")]) == 1
    assert "--write-schemas" in capsys.readouterr().err


def test_main_validates_a_config(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    good = write(tmp_path / "good.yaml", USER_FILE)
    assert main(["--config", str(good)]) == 0
    out = capsys.readouterr().out
    assert "ok: agents (plugin 'runner'): claude, codex, fake, shell, sleepy" in out
    assert "ok: hub\n" in out
    bad = write(tmp_path / "bad.yaml", "hub: {idle_timeout: -1}\n")
    assert main(["--config", str(bad)]) == 1
    assert f"{bad}: hub.idle_timeout" in capsys.readouterr().err
    monkeypatch.setenv("FLEETBUS_DISABLE_PLUGINS", "runner")
    assert main(["--config", str(good)]) == 0
    out = capsys.readouterr().out
    assert "ok: hub\n" in out and "ok: agents" not in out
    assert "not checked: agents: plugin 'runner' is disabled by FLEETBUS_DISABLE_PLUGINS" in out


def test_sections_default_without_files() -> None:
    sections = core_sections()
    sections.add("runner", AGENTS)
    sections.add("runner", DISPATCH)
    manifest = sections.model()().model_dump()
    assert manifest["agents"] == {}
    assert manifest["dispatch"]["total_concurrency"] == 8
    assert manifest["hub"] == {"idle_timeout": 600}


# --- sections registered by plugins --------------------------------------------------------


class Acme(BaseModel):
    """Settings of the acme plugin."""

    model_config = ConfigDict(extra="forbid")

    url: str = Field("https://example.invalid", description="Where acme lives.")
    retries: int = Field(3, ge=0, description="Attempts before acme gives up.")


ACME = ConfigSection("acme", Acme, "Settings of the acme plugin.")


def acme_sections(**not_loaded: str) -> ConfigSections:
    sections = core_sections()
    sections.not_loaded = not_loaded.get
    sections.add("runner", AGENTS)
    sections.add("runner", DISPATCH)
    sections.add("acme-plugin", ACME)
    return sections


def test_a_plugin_section_is_validated_and_read_by_its_key(tmp_path: Path) -> None:
    path = write(tmp_path / "fleetbus.yaml", "acme:\n  retries: 5\n")
    config = load_manifest(path, env={}, sections=acme_sections())
    assert config[ACME] == Acme(retries=5)
    assert config.owner("acme") == "acme-plugin"
    assert load_manifest(env=env_for(tmp_path), sections=acme_sections())[ACME] == Acme()
    other = ConfigSection("acme", Acme, "Another section that is not registered.")
    assert ACME in config and other not in config
    with pytest.raises(KeyError, match="no loaded plugin registered it"):
        config[other]
    with pytest.raises(AttributeError, match="sections: acme, agents, dispatch, hub"):
        config.nothing  # noqa: B018


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "acme:\n  retries: -1\n",
            "acme.retries: Input should be greater than or equal to 0 (plugin 'acme-plugin')",
            id="bad-value",
        ),
        pytest.param(
            "acme:\n  retry: 1\n",
            "acme.retry: unknown key; did you mean 'retries'? (known keys: url, retries) "
            "(plugin 'acme-plugin')",
            id="unknown-key",
        ),
        pytest.param(
            "acme: [1]\n",
            "acme: Input should be a valid dictionary or instance of Acme (plugin 'acme-plugin')",
            id="not-a-mapping",
        ),
        pytest.param(
            "acm: {}\n",
            "acm: unknown key; did you mean 'acme'? (known keys: acme, agents, dispatch, hub)",
            id="misspelled-section",
        ),
    ],
)
def test_a_bad_plugin_section_names_file_key_and_plugin(
    tmp_path: Path, text: str, expected: str
) -> None:
    path = write(tmp_path / "fleetbus.yaml", text)
    with pytest.raises(ConfigError) as info:
        load_manifest(path, env={}, sections=acme_sections())
    assert str(info.value) == f"{path}: {expected}"


def test_a_section_of_a_plugin_that_is_not_loaded_is_set_aside(tmp_path: Path) -> None:
    path = write(tmp_path / "fleetbus.yaml", "gone:\n  anything: [goes]\n")
    why = "plugin 'gone' is disabled by FLEETBUS_DISABLE_PLUGINS"
    config = load_manifest(path, env={}, sections=acme_sections(gone=why))
    assert config.ignored == {"gone": why}
    assert "gone" not in list(config)
    gone = ConfigSection("gone", Acme, "A disabled plugin's section.")
    with pytest.raises(KeyError, match=f"config section 'gone' is not loaded: {why}"):
        config[gone]


def test_a_section_claimed_twice_names_both_owners() -> None:
    sections = acme_sections()
    with pytest.raises(
        StartupError,
        match="config section 'acme' is registered twice: by plugin 'acme-plugin' and by "
        "plugin 'other'",
    ):
        sections.add("other", ConfigSection("acme", Acme, "Clash."))
    with pytest.raises(StartupError, match="plugin 'acme-plugin' registers config section"):
        sections.add("acme-plugin", ACME)
    with pytest.raises(
        StartupError, match="'hub' is registered twice: by the core and by plugin 'other'"
    ):
        sections.add("other", ConfigSection("hub", Acme, "Not yours."))


@pytest.mark.parametrize("name", ["Acme", "1st", "with-dash", "", "json", "model_config"])
def test_section_names_are_checked(name: str) -> None:
    with pytest.raises(StartupError, match="config section name"):
        ConfigSection(name, Acme, "Bad name.")
