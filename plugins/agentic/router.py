"""Which agent takes a task: the registry of agents and the router (seed semantics).

Local agents come from the manifests (the runner's `agents`, with `agentic.agents` for
`max_load`); remote agents (fleet mode) register and heartbeat, and are reaped once
silent for longer than the TTL. A task's labels must all be in an agent's capabilities;
eligible agents have load < max_load; a critical task goes to the least loaded, others to
the best score 1 - load/max_load; ties go to the first name.

Pure: no database, no bus, no clock of its own (callers pass `now`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Candidate:
    name: str
    capabilities: frozenset[str]
    load: int
    max_load: int
    remote: bool = False


class NoAgent(Exception):
    """No agent can take the task. `never`: none has the labels (an error for the
    caller); otherwise they are all busy (the task waits)."""

    def __init__(self, message: str, *, never: bool) -> None:
        super().__init__(message)
        self.never = never


def known_capabilities(candidates: Iterable[Candidate]) -> list[str]:
    return sorted({cap for c in candidates for cap in c.capabilities})


def capable(labels: Iterable[str], candidates: Iterable[Candidate]) -> list[Candidate]:
    need = set(labels)
    return [c for c in candidates if need <= c.capabilities]


def route(labels: Sequence[str], candidates: Sequence[Candidate], *, critical: bool) -> str:
    """The name of the agent that takes a task with `labels`, or NoAgent."""
    able = capable(labels, candidates)
    if not able:
        known = ", ".join(known_capabilities(candidates)) or "none"
        raise NoAgent(
            f"no agent has all of the labels {sorted(set(labels))}; known capabilities: {known}",
            never=True,
        )
    eligible = [c for c in able if c.load < c.max_load]
    if not eligible:
        names = ", ".join(f"{c.name} ({c.load}/{c.max_load})" for c in sorted(able, key=_name))
        raise NoAgent(f"every capable agent is at its max load: {names}", never=False)
    if critical:
        best = min(eligible, key=lambda c: (c.load, c.name))
    else:
        best = min(eligible, key=lambda c: (-(1 - c.load / c.max_load), c.name))
    return best.name


def _name(c: Candidate) -> str:
    return c.name


@dataclass
class Registry:
    """Remote agents that announced themselves, forgotten `ttl` seconds after their last
    heartbeat."""

    ttl: float = 90.0
    agents: dict[str, Candidate] = field(default_factory=dict)
    seen: dict[str, float] = field(default_factory=dict)

    def register(self, name: str, capabilities: Iterable[str], max_load: int, now: float) -> None:
        self.agents[name] = Candidate(name, frozenset(capabilities), 0, max_load, remote=True)
        self.seen[name] = now

    def heartbeat(self, name: str, load: int, now: float) -> bool:
        """Record a heartbeat; False when `name` is not registered (it must register)."""
        agent = self.agents.get(name)
        if agent is None:
            return False
        self.agents[name] = Candidate(name, agent.capabilities, load, agent.max_load, True)
        self.seen[name] = now
        return True

    def reap(self, now: float) -> list[str]:
        """Forget agents silent for longer than the TTL; their names."""
        gone = [name for name, at in self.seen.items() if now - at > self.ttl]
        for name in gone:
            del self.agents[name], self.seen[name]
        return gone

    def list(self, now: float) -> list[Candidate]:
        self.reap(now)
        return list(self.agents.values())
