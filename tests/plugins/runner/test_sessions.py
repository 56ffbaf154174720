"""The session policy on its own: start, merge, refuse, drop the oldest, enqueue.

Pure decisions: the time comes from a test clock that moves only when the test says so.
"""

from __future__ import annotations

from typing import Any

import pytest

from fleetbus.plugins.runner.clock import ManualClock
from fleetbus.plugins.runner.config import SessionSpec
from fleetbus.plugins.runner.sessions import (
    Enqueue,
    Merge,
    Prompt,
    Refuse,
    SessionPolicy,
    Start,
    Waiting,
)

NOON = 1767268800.0
WS = "a/b/c"


def policy(**spec: Any) -> SessionPolicy:
    return SessionPolicy(SessionSpec(**{"debounce_ms": 800, **spec}))


def prompt(**kw: Any) -> Prompt:
    fields: dict[str, Any] = {
        "agent": "fake",
        "model": None,
        "size": 10,
        "mode": "queue",
        "idempotent": False,
        "merge_limit": 1000,
        **kw,
    }
    return Prompt(**fields)


def waiting(run_id: str, at: float, **kw: Any) -> Waiting:
    fields: dict[str, Any] = {"agent": "fake", "model": None, "size": 10, **kw}
    return Waiting(run_id=run_id, merged_at=at, **fields)


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock(NOON)


def test_an_idle_workspace_starts_at_once_when_the_runner_can(clock: ManualClock) -> None:
    decision = policy().admit(prompt(), WS, busy=False, waiting=[], startable=True, now=clock())
    assert decision == Start()


def test_an_idle_workspace_waits_without_debounce_when_the_runner_cannot(
    clock: ManualClock,
) -> None:
    decision = policy().admit(prompt(), WS, busy=False, waiting=[], startable=False, now=clock())
    assert decision == Enqueue(behind_session=False, not_before=0.0)
    assert isinstance(decision, Enqueue) and decision.reason == ""


def test_a_busy_workspace_queues_behind_its_run_for_the_debounce_window(
    clock: ManualClock,
) -> None:
    decision = policy().admit(prompt(), WS, busy=True, waiting=[], startable=True, now=clock())
    assert decision == Enqueue(behind_session=True, not_before=NOON + 0.8)
    assert isinstance(decision, Enqueue) and decision.reason == "session busy"


def test_a_prompt_within_the_window_merges_into_the_last_waiting_run(clock: ManualClock) -> None:
    queue = [waiting("r1", NOON - 5), waiting("r2", NOON)]
    clock.advance(0.5)
    decision = policy().admit(prompt(), WS, busy=True, waiting=queue, startable=False, now=clock())
    assert decision == Merge(into="r2", not_before=NOON + 0.5 + 0.8)


def test_a_prompt_after_the_window_waits_on_its_own(clock: ManualClock) -> None:
    queue = [waiting("r1", NOON)]
    clock.advance(0.81)
    decision = policy().admit(prompt(), WS, busy=True, waiting=queue, startable=False, now=clock())
    assert decision == Enqueue(behind_session=True, not_before=NOON + 0.81 + 0.8)


@pytest.mark.parametrize(
    ("spec", "new"),
    [
        ({"debounce_ms": 0}, {}),
        ({}, {"agent": "other"}),
        ({}, {"model": "big"}),
        ({}, {"idempotent": True}),
        ({}, {"mode": "interrupt"}),
        ({}, {"size": 989}),  # 10 + 2 + 989 > 1000: the merged prompt would not fit
    ],
)
def test_what_never_merges(clock: ManualClock, spec: dict[str, Any], new: dict[str, Any]) -> None:
    queue = [waiting("r1", NOON)]
    decision = policy(**spec).admit(
        prompt(**new), WS, busy=True, waiting=queue, startable=False, now=clock()
    )
    assert isinstance(decision, Enqueue)


def test_a_merged_prompt_that_just_fits_merges(clock: ManualClock) -> None:
    queue = [waiting("r1", NOON)]
    decision = policy().admit(
        prompt(size=988), WS, busy=True, waiting=queue, startable=False, now=clock()
    )
    assert decision == Merge(into="r1", not_before=NOON + 0.8)


def test_a_full_queue_refuses_new_prompts_when_it_drops_new(clock: ManualClock) -> None:
    queue = [waiting("r1", NOON - 10), waiting("r2", NOON - 9)]
    decision = policy(cap=2, drop="new").admit(
        prompt(agent="other"), WS, busy=True, waiting=queue, startable=False, now=clock()
    )
    assert decision == Refuse(
        f"refused: the session queue of {WS} is full (2 waiting; drop new)",
        "session queue full (2)",
    )


def test_a_full_queue_drops_its_oldest_when_it_drops_old(clock: ManualClock) -> None:
    queue = [waiting("r1", NOON - 10), waiting("r2", NOON - 9)]
    decision = policy(cap=2).admit(
        prompt(agent="other"), WS, busy=True, waiting=queue, startable=False, now=clock()
    )
    assert decision == Enqueue(
        behind_session=True,
        not_before=NOON + 0.8,
        drop_oldest="r1",
        drop_reason=f"dropped: the session queue of {WS} was full (2 waiting; drop old)",
    )


def test_a_prompt_waits_behind_the_queue_of_an_idle_workspace(clock: ManualClock) -> None:
    """Runs wait in the workspace (for a lane, say) though none is active: the new prompt
    waits behind them, debounced, and is never started ahead of them."""
    queue = [waiting("r1", NOON - 10)]
    decision = policy().admit(
        prompt(agent="other"), WS, busy=False, waiting=queue, startable=False, now=clock()
    )
    assert decision == Enqueue(behind_session=True, not_before=NOON + 0.8)
