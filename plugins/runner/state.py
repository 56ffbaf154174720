"""The runner's live view: what is active, what is queued, lane and pool use, frozen.

SQLite is the truth; this is the in-memory view of it that decisions read, rebuilt at
startup. Every decision that changes it (dispatch, drain, settle, kill) holds `lock`, so
caps hold at every instant.

Plain state: never touches the database, the bus or a process.
"""

from __future__ import annotations

from collections import Counter

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
        self.lock = anyio.Lock()

    @property
    def queued_total(self) -> int:
        return sum(self.queued_by_agent.values())

    def is_busy(self) -> bool:
        return bool(self.active) or self.queued_total > 0

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

    def track(self, run: ActiveRun) -> None:
        """`run` is active: it holds a lane slot and its workspace's session."""
        self.active[run.run_id] = run
        self.lanes.add(run.agent, run.model)
        self.session_active[run.workspace] += 1

    def release(self, run: ActiveRun) -> None:
        """`run`'s process is gone: free its slot and its workspace's session."""
        self.active.pop(run.run_id, None)
        self.lanes.remove(run.agent, run.model)
        self.session_active[run.workspace] -= 1
