"""The runner's live view: what is active, what is queued, lane and pool use, frozen.

SQLite is the truth; this is the in-memory view of it that decisions read, rebuilt at
startup. Every decision that changes it (dispatch, drain, settle, kill) holds `lock`, so
caps hold at every instant. `counts` is how many runs the store holds in each status
(what `runner.status` reports without reading SQLite): loaded from the store once, then
moved by each committed change of a run's status, right after its commit.

Plain state: never touches the database, the bus or a process.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping

import anyio

from .config import AgentSpec, DispatchSpec
from .limits import Lanes, Pool
from .runs import ActiveRun


class RunnerState:
    def __init__(self, agents: dict[str, AgentSpec], dispatch: DispatchSpec, frozen: bool) -> None:
        self.agents = agents
        self.session = dispatch.session
        self.lanes = Lanes.from_agents(dispatch.total_concurrency, agents)
        self.pools = {
            name: Pool(name, spec.rates, dispatch.breaker) for name, spec in agents.items()
        }
        self.frozen = frozen
        self.active: dict[str, ActiveRun] = {}
        self.session_active: Counter[str] = Counter()  # active runs by workspace
        self.queued_by_agent: Counter[str] = Counter()
        self.queued_by_workspace: Counter[str] = Counter()
        self.counts = RunCounts()
        self.lock = anyio.Lock()

    @property
    def queued_total(self) -> int:
        return sum(self.queued_by_agent.values())

    def is_busy(self) -> bool:
        return self.lanes.running_total > 0 or self.queued_total > 0  # starting ones too

    def session_busy(self, workspace: str) -> bool:
        """True while `workspace` has as many active runs as its session allows."""
        return self.session_active[workspace] >= self.session.max_concurrent

    def busy_workspaces(self) -> list[str]:
        return [w for w, n in self.session_active.items() if n >= self.session.max_concurrent]

    def add_queued(self, agent: str, workspace: str, n: int = 1) -> None:
        self.queued_by_agent[agent] += n
        self.queued_by_workspace[workspace] += n

    def remove_queued(self, agent: str, workspace: str) -> None:
        self.queued_by_agent[agent] -= 1
        self.queued_by_workspace[workspace] -= 1

    def track(self, run: ActiveRun, *, reserved: bool = False) -> None:
        """`run` is active: it holds a lane slot and its workspace's session (already
        taken when `reserved`)."""
        self.active[run.run_id] = run
        if not reserved:
            self.reserve(run.agent, run.model, run.workspace)

    def reserve(self, agent: str, model: str | None, workspace: str) -> None:
        """Hold a lane slot and a session for a run being started."""
        self.lanes.add(agent, model)
        self.session_active[workspace] += 1

    def unreserve(self, agent: str, model: str | None, workspace: str) -> None:
        """A reserved run did not start: give its slot and its session back."""
        self.lanes.remove(agent, model)
        self.session_active[workspace] -= 1

    def release(self, run: ActiveRun) -> None:
        """`run`'s process is gone: free its slot and its workspace's session."""
        self.active.pop(run.run_id, None)
        self.lanes.remove(run.agent, run.model)
        self.session_active[run.workspace] -= 1


class RunCounts:
    """How many runs the store holds in each status, kept in memory so that
    `runner.status` never reads SQLite for them.

    Loaded from the store once at startup (`load`, after the runs the previous hub left
    were adopted, queued again or settled, before the runner takes work), then moved by
    every committed change of a run's status: `added` after an insert, `moved` after a
    claim, a cancel or an end, each on the event loop right after its write returned
    (a write that raised changed nothing), with no await in between: no change is
    counted twice or missed, and none is counted before its commit.
    """

    def __init__(self) -> None:
        self.by_status: Counter[str] = Counter()
        self.loaded = False

    def load(self, counts: Mapping[str, int]) -> None:
        self.by_status = Counter({s: n for s, n in counts.items() if n})
        self.loaded = True

    def added(self, status: str, n: int = 1) -> None:
        """`n` new runs were committed with `status`."""
        self.by_status[status] += n

    def moved(self, old: str, new: str, n: int = 1) -> None:
        """`n` runs went from `old` to `new` (committed)."""
        self.by_status[old] -= n
        self.by_status[new] += n

    def ended(self, statuses: Iterable[str]) -> None:
        """Running runs ended, one for each of `statuses` (their ends committed)."""
        for status in statuses:
            self.moved("running", status)

    def get(self, status: str) -> int:
        return self.by_status[status]

    @property
    def total(self) -> int:
        return sum(self.by_status.values())
