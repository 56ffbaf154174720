"""The router, the registry, allowances and prompts: the agentic service's pure parts."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from fleetbus.bus import StartupError
from fleetbus.plugins.agentic import allowance, prompt
from fleetbus.plugins.agentic.config import Allowance
from fleetbus.plugins.agentic.router import Candidate, NoAgent, Registry, route
from fleetbus.testing.runner import runner_hub

NOON = dt.datetime(2026, 1, 1, 12, tzinfo=dt.UTC).timestamp()


def agent(name: str, caps: str = "", load: int = 0, max_load: int = 2) -> Candidate:
    return Candidate(name, frozenset(caps.split()), load, max_load)


def test_labels_must_all_be_capabilities() -> None:
    agents = [agent("a", "python"), agent("b", "python go")]
    assert route(["python", "go"], agents, critical=False) == "b"
    with pytest.raises(NoAgent) as e:
        route(["rust"], agents, critical=False)
    assert e.value.never
    assert "known capabilities: go, python" in str(e.value)


def test_best_score_wins_and_ties_go_by_name() -> None:
    agents = [agent("b", load=0, max_load=2), agent("a", load=0, max_load=4)]
    assert route([], agents, critical=False) == "a"  # tie at score 1: by name
    agents = [agent("a", load=3, max_load=4), agent("b", load=1, max_load=2)]
    assert route([], agents, critical=False) == "b"  # 0.5 beats 0.25


def test_a_critical_task_goes_to_the_least_loaded() -> None:
    agents = [agent("a", load=2, max_load=10), agent("b", load=1, max_load=2)]
    assert route([], agents, critical=True) == "b"
    assert route([], agents, critical=False) == "a"  # score 0.8 beats 0.5


def test_every_capable_agent_at_max_load_means_wait_not_never() -> None:
    with pytest.raises(NoAgent) as e:
        route(["python"], [agent("a", "python", load=2, max_load=2)], critical=False)
    assert not e.value.never
    assert "a (2/2)" in str(e.value)


def test_the_registry_reaps_silent_agents() -> None:
    reg = Registry(ttl=90)
    reg.register("remote-1", ["python"], 3, now=0)
    reg.register("remote-2", [], 1, now=0)
    assert reg.heartbeat("remote-1", load=2, now=60)
    assert not reg.heartbeat("nobody", load=0, now=60)
    names = [c.name for c in reg.list(now=120)]
    assert names == ["remote-1"]
    assert reg.agents["remote-1"].load == 2
    assert reg.list(now=200) == []


def test_allowance_checks_in_order_and_says_when_it_resets() -> None:
    limits = Allowance(daily_job_limit=2, concurrent_jobs=1, model_allowlist=["m1"])
    ok = allowance.check("a", limits, allowance.Usage(jobs=1), 0, "m1", NOON)
    assert ok.allowed
    model = allowance.check("a", limits, allowance.Usage(jobs=5), 5, "m2", NOON)
    assert not model.allowed and "'m2' is not allowed" in model.reason  # first check wins
    jobs = allowance.check("a", limits, allowance.Usage(jobs=2), 5, "m1", NOON)
    assert "daily job limit" in jobs.reason
    assert jobs.retry_at == dt.datetime(2026, 1, 2, tzinfo=dt.UTC).timestamp()
    busy = allowance.check("a", limits, allowance.Usage(jobs=1), 1, "m1", NOON)
    assert "1 of 1 concurrent" in busy.reason and busy.retry_at is None
    tokens = allowance.check(
        "a", Allowance(daily_token_limit=100), allowance.Usage(tokens=100), 0, None, NOON
    )
    assert "daily token limit" in tokens.reason
    cost = allowance.check(
        "a", Allowance(daily_cost_limit=1.5), allowance.Usage(cost_usd=2.0), 0, None, NOON
    )
    assert "daily cost limit ($1.5)" in cost.reason


def test_thresholds_warn_at_80_percent_and_report_exceeded() -> None:
    limits = Allowance(daily_job_limit=10, daily_token_limit=1000, daily_cost_limit=1.0)
    found = allowance.thresholds(limits, allowance.Usage(jobs=8, tokens=1000, cost_usd=0.5))
    assert [(n, level) for n, level, _ in found] == [
        ("daily_job_limit", "warning"),
        ("daily_token_limit", "exceeded"),
    ]


def test_the_day_rolls_over_at_utc_midnight() -> None:
    before = dt.datetime(2026, 1, 1, 23, 59, 59, tzinfo=dt.UTC).timestamp()
    assert allowance.utc_day(before) == "2026-01-01"
    assert allowance.utc_day(before + 1) == "2026-01-02"
    assert allowance.next_reset(before) == before + 1


def test_the_prompt_names_task_branch_language_and_how_to_ask() -> None:
    text = prompt.build(
        None,
        task="Fix the login",
        repo="/src/app",
        branch="agent/fix",
        base="main",
        language=prompt.Language("Python", "pip install -e .", "pytest"),
        constraints=["no pushing"],
    )
    assert text.startswith("Fix the login\n")
    for part in ("/src/app", "agent/fix (from main)", "Python", "pytest", "- no pushing",
                 "BLOCKED.md", "agentic.report"):  # fmt: skip
        assert part in text, part
    custom = prompt.build(
        "Do {task} on {branch}", task="x", repo="r", branch="b", base="m",
        language=prompt.UNKNOWN, constraints=[],
    )  # fmt: skip
    assert custom == "Do x on b"
    assert prompt.check_template("{task} {nope}") is not None
    assert prompt.check_template("no task here") is not None
    assert prompt.check_template("{task} in {repo}") is None


def test_slugs_are_safe_segments() -> None:
    assert prompt.slug("Fix the LOGIN bug!", "t-0123456789ab") == "fix-the-login-bug-6789ab"
    assert prompt.slug("!!!", "t-abcdef") == "task-abcdef"
    assert len(prompt.slug("x" * 500, "t-abcdef")) <= 47


def test_an_unmatched_brace_is_a_bad_template() -> None:
    problem = prompt.check_template("{task} and {")
    assert problem is not None and "braces" in problem


@pytest.mark.anyio
async def test_a_bad_prompt_template_stops_the_hub_naming_the_key(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with pytest.raises(StartupError) as e:
        async with runner_hub(home, agentic={"prompt_template": "{task} on {branchh}"}):
            pass
    assert "prompt_template" in str(e.value) and "branchh" in str(e.value)
