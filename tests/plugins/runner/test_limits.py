"""Pure unit tests of the runner's capacity rules (limits.py) and workspace names
(workspaces.py): plain state and an explicit `now`, no hub and no processes."""

from __future__ import annotations

import calendar
import os
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from fleetbus.plugins.runner.config import AgentRates, AgentSpec, BreakerSpec
from fleetbus.plugins.runner.limits import Lanes, Pool, hhmm
from fleetbus.plugins.runner.workspaces import BadWorkspace, normalize, resolve

NOON = float(calendar.timegm((2026, 1, 1, 12, 0, 0)))
RESET = NOON + 18 * 3600  # 06:00 UTC the next day
FAKE = ["{python}", "-m", "fleetbus.testing.fake_agent", "{prompt}"]


def agent(concurrency: int | dict[str, int] = 1, models: list[str] | None = None) -> AgentSpec:
    return AgentSpec(
        command=FAKE,
        concurrency=concurrency,
        models=models or [],
        model_args=["{model}"] if models else [],
    )


def pool(breaker: BreakerSpec | None = None, **rates: object) -> Pool:
    return Pool("fake", AgentRates.model_validate(rates), breaker or BreakerSpec())


# --- lanes ---------------------------------------------------------------------------------


def test_lanes_block_at_the_global_total() -> None:
    lanes = Lanes.from_agents(2, {"a": agent(5), "b": agent(5)})
    assert lanes.blocker("a", None) is None
    lanes.add("a", None)
    lanes.add("b", None)
    assert lanes.blocker("a", None) == "lane full: total 2/2"
    assert lanes.blocker("b", None) == "lane full: total 2/2"
    lanes.remove("b", None)
    assert lanes.blocker("b", None) is None


def test_lanes_block_at_the_agent_limit() -> None:
    lanes = Lanes.from_agents(8, {"a": agent(2), "b": agent(1)})
    lanes.add("a", None)
    assert lanes.blocker("a", None) is None
    lanes.add("a", None)
    assert lanes.blocker("a", None) == "lane full: a 2/2"
    assert lanes.blocker("b", None) is None


def test_lanes_block_at_the_model_limit_and_the_agent_total() -> None:
    spec = agent({"total": 3, "m1": 1}, models=["m1", "m2"])
    lanes = Lanes.from_agents(8, {"a": spec})
    lanes.add("a", "m1")
    assert lanes.blocker("a", "m1") == "lane full: a:m1 1/1"
    assert lanes.blocker("a", "m2") is None
    assert lanes.blocker("a", None) is None  # the agent itself has room
    lanes.add("a", "m2")
    lanes.add("a", "m2")
    assert lanes.blocker("a", "m2") == "lane full: a 3/3"
    assert lanes.info() == {"total": (3, 8), "a": (3, 3), "a:m1": (1, 1)}
    lanes.remove("a", "m1")
    assert lanes.blocker("a", "m1") is None
    assert lanes.info()["a:m1"] == (0, 1)


def test_a_model_mapping_without_total_limits_only_the_models() -> None:
    lanes = Lanes.from_agents(8, {"a": agent({"m1": 1}, models=["m1", "m2"])})
    for _ in range(5):
        lanes.add("a", "m2")
    assert lanes.blocker("a", "m2") is None
    assert lanes.info()["a"] == (5, None)


@given(st.lists(st.tuples(st.sampled_from(["add", "remove"]), st.sampled_from(["m1", "m2"]))))
def test_lanes_never_admit_beyond_a_cap(ops: list[tuple[str, str]]) -> None:
    lanes = Lanes.from_agents(3, {"a": agent({"total": 2, "m1": 1}, models=["m1", "m2"])})
    for op, model in ops:
        if op == "add" and lanes.blocker("a", model) is None:
            lanes.add("a", model)
        elif op == "remove" and lanes.by_model[("a", model)] > 0:
            lanes.remove("a", model)
        assert lanes.running_total <= 3
        assert lanes.by_agent["a"] <= 2
        assert lanes.by_model[("a", "m1")] <= 1


# --- pools: rates --------------------------------------------------------------------------


def test_hhmm_is_utc() -> None:
    assert hhmm(NOON) == "12:00"
    assert hhmm(RESET) == "06:00"


def test_reset_boundaries() -> None:
    p = pool()
    assert p.last_reset(NOON) == NOON - 6 * 3600
    assert p.next_reset(NOON) == RESET
    assert p.last_reset(RESET) == RESET  # at the boundary, the new day has begun
    assert p.last_reset(RESET - 1) == NOON - 6 * 3600
    late = pool(reset_utc="23:30")
    assert late.next_reset(NOON) == NOON + 11.5 * 3600


def test_daily_limit_counts_starts_until_the_reset() -> None:
    p = pool(daily_limit=2)
    assert p.blocker(NOON) is None
    p.started(NOON)
    assert p.blocker(NOON) is None
    p.started(NOON + 1)
    assert p.blocker(NOON + 2) == ("daily limit 2/2 until 06:00 UTC", RESET)
    assert p.blocker(RESET - 0.001) is not None
    assert p.blocker(RESET) is None
    p.started(RESET)
    assert p.started_today == 1


def test_min_delay_rounds_the_wait_up() -> None:
    p = pool(min_delay=60)
    p.started(NOON)
    assert p.blocker(NOON) == ("rate delay 60s", NOON + 60)
    assert p.blocker(NOON + 59.2) == ("rate delay 1s", NOON + 60)
    assert p.blocker(NOON + 60) is None


def test_sustained_and_burst_delays() -> None:
    p = pool(sustained_delay=3600, burst_window=7200, burst_delay=10, min_delay=5)
    assert p.delay(NOON) == 3600
    assert p.delay(RESET - 7200) == 10  # the window's first second
    assert p.delay(RESET - 7201) == 3600
    assert pool(burst_window=7200, burst_delay=1, min_delay=5).delay(RESET - 60) == 5
    assert pool(sustained_delay=30, burst_delay=1).delay(RESET - 60) == 30  # no window


def test_backoff_only_extends() -> None:
    p = pool()
    p.back_off(NOON + 100, "first")
    p.back_off(NOON + 50, "shorter")
    assert (p.backoff_until, p.backoff_reason) == (NOON + 100, "first")
    assert p.blocker(NOON) == ("backoff until 12:01 UTC", NOON + 100)
    assert p.blocker(NOON + 100) is None
    p.back_off(NOON + 200, "longer")
    assert p.backoff_reason == "longer"


# --- pools: the circuit breaker ------------------------------------------------------------


def test_three_fast_failures_trip_the_breaker() -> None:
    p = pool()
    assert not p.record_failure(NOON, NOON - 5)
    assert not p.record_failure(NOON + 1, NOON - 5)
    assert p.record_failure(NOON + 2, NOON)
    assert p.backoff_until == NOON + 2 + 30 * 60
    assert "3 runs failed within 60s" in p.backoff_reason
    assert p.blocker(NOON + 3) is not None
    assert len(p.fast_failures) == 0


def test_slow_failures_and_missing_starts_do_not_count() -> None:
    p = pool()
    for n in range(5):
        assert not p.record_failure(NOON + n, NOON - 61)
        assert not p.record_failure(NOON + n, None)
    assert p.backoff_until == 0


def test_failures_outside_the_window_and_a_success_reset_the_count() -> None:
    p = pool(BreakerSpec(failures=3, window_s=100))
    p.record_failure(NOON, NOON)
    p.record_failure(NOON + 1, NOON + 1)
    assert not p.record_failure(NOON + 102, NOON + 102)  # the first two left the window
    p.record_success()
    assert not p.record_failure(NOON + 103, NOON + 103)
    assert not p.record_failure(NOON + 104, NOON + 104)
    assert p.record_failure(NOON + 105, NOON + 105)


# --- workspace names -----------------------------------------------------------------------


@pytest.mark.parametrize(
    "name", ["core/app/fix-login", "a", "a/b/c/d/e/f", "A_1/b.c/d-e", "x" * 100]
)
def test_good_names_are_kept(tmp_path: Path, name: str) -> None:
    assert normalize(name, tmp_path) == name


@pytest.mark.parametrize(
    ("name", "fragment"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("a/../b", "'..'"),
        ("..", "'..'"),
        ("./a", "'.'"),
        ("a//b", "empty"),
        ("a/b/", "empty"),
        ("a/b\x00", "NUL"),
        ("-x/a", "'-x'"),
        ("a/--force", "'--force'"),
        ("a/.git", "'.git'"),
        ("a/b c", "'b c'"),
        ("a/b\\c", "'b\\\\c'"),
        ("a/é", "'é'"),
        ("a/b/c/d/e/f/g", "7 levels"),
        ("x" * 101, "at most 100"),
    ],
)
def test_bad_names_say_why(tmp_path: Path, name: str, fragment: str) -> None:
    with pytest.raises(BadWorkspace) as err:
        normalize(name, tmp_path)
    assert fragment in str(err.value)


@pytest.mark.parametrize("name", ["a/b/c\n", "a\n/b", "a/b\r", "a/b\t"])
def test_names_with_line_breaks_or_control_characters_are_refused(
    tmp_path: Path, name: str
) -> None:
    with pytest.raises(BadWorkspace):
        normalize(name, tmp_path)


def test_absolute_paths_inside_the_root_become_names(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    assert normalize(str(root / "org/repo/task"), root) == "org/repo/task"
    with pytest.raises(BadWorkspace, match="outside the workspace root"):
        normalize(str(root), root)
    with pytest.raises(BadWorkspace, match="outside the workspace root"):
        normalize(str(tmp_path / "elsewhere"), root)
    with pytest.raises(BadWorkspace, match="outside the workspace root"):
        normalize("/etc/passwd", root)


def test_resolve_creates_inside_the_root_and_refuses_symlink_escapes(tmp_path: Path) -> None:
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    path = resolve("org/repo/task", root)
    assert path == root.resolve() / "org/repo/task" and path.is_dir()
    (root / "link").symlink_to(outside)
    (root / "dangling").symlink_to(tmp_path / "nowhere")
    for name in ("link/x", "dangling/x"):
        normalize(name, root)  # a fine name: only resolving shows the escape
        for create in (False, True):
            with pytest.raises(BadWorkspace, match="outside the workspace root"):
                resolve(name, root, create=create)
    assert os.listdir(outside) == []
    assert not (tmp_path / "nowhere").exists()
    (root / "inner").symlink_to(root / "org")
    assert resolve("inner/repo2", root) == root.resolve() / "org/repo2"


def test_a_segment_made_a_symlink_after_it_resolved_plainly_is_refused(tmp_path: Path) -> None:
    # a workspace of plain directories is found with one lstat a segment; swap one for a
    # symlink and the long way (resolve, refuse the escape) is taken again
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    assert resolve("org/repo/task", root) == root / "org/repo/task"
    (root / "org/repo/task").rmdir()
    (root / "org/repo").rmdir()
    (root / "org/repo").symlink_to(outside)
    for create in (False, True):
        with pytest.raises(BadWorkspace, match="outside the workspace root"):
            resolve("org/repo/task", root, create=create)
    assert os.listdir(outside) == []
    (root / "org/file").write_text("x")
    with pytest.raises(NotADirectoryError):
        resolve("org/file/task", root)


def test_a_root_swapped_for_a_symlink_after_it_was_resolved_is_refused(tmp_path: Path) -> None:
    root, moved, elsewhere = tmp_path / "root", tmp_path / "moved", tmp_path / "elsewhere"
    root.mkdir()
    (elsewhere / "org/repo").mkdir(parents=True)
    assert resolve("org/repo", root) == root / "org/repo"  # the root's real path is kept
    root.rename(moved)
    root.symlink_to(elsewhere)
    for create in (False, True):
        with pytest.raises(BadWorkspace, match="outside the workspace root"):
            resolve("org/repo", root, create=create)


def test_a_root_reached_through_a_symlink_gives_resolved_paths(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "alias").symlink_to(tmp_path / "real")
    made = resolve("org/repo", tmp_path / "alias")
    assert made == (tmp_path / "real").resolve() / "org/repo" and made.is_dir()
    again = resolve("org/repo", tmp_path / "alias", create=False)
    assert again == made


def test_resolve_without_create_makes_nothing(tmp_path: Path) -> None:
    path = resolve("a/b/c", tmp_path, create=False)
    assert path == tmp_path.resolve() / "a/b/c"
    assert list(tmp_path.iterdir()) == []


NAMES = st.builds(
    lambda parts, tail: "/".join(parts) + tail,
    st.lists(st.from_regex(r"[ab_.-][ab_.-]{0,3}", fullmatch=True), min_size=1, max_size=7),
    st.sampled_from(["", "\n", "\r", " ", "/", "\x00", "é"]),
)


@given(NAMES | st.text(max_size=30))
@example("a/b/c\n")
def test_any_accepted_name_stays_inside_the_root(name: str) -> None:
    root = Path("/nonexistent-fleetbus-root")
    try:
        canonical = normalize(name, root)
    except BadWorkspace:
        return
    path = resolve(canonical, root, create=False)
    assert path.is_relative_to(root) and path != root
    assert all(part not in ("", ".", "..") for part in canonical.split("/"))
    assert not any(part.startswith("-") for part in canonical.split("/"))
    assert all(ch.isprintable() for ch in canonical)
