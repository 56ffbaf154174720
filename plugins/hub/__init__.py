"""The `hub` service: the hub's own actions (ping, status, jobs).

Built in and always loaded unless disabled; other plugins can rely on it.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field

from fleetbus.bus import Context, InvalidInput, hookimpl
from fleetbus.bus.actions import ActionRegistrar
from fleetbus.bus.hub import Hub
from fleetbus.bus.version import version


class Ping(BaseModel):
    echo: str = Field("", description="Text returned unchanged.")


class Pong(BaseModel):
    echo: str
    version: str
    correlation_id: str


class HubStatus(BaseModel):
    version: str
    pid: int
    home: str
    socket: str
    uptime_s: float
    clients: int
    plugins: list[str]
    actions: int
    subscribers: list[dict[str, Any]]
    tasks: int = Field(description="Tasks alive in the hub's event loop; idle, it stays flat.")
    idle_timeout_s: float


class JobRef(BaseModel):
    job_id: str = Field(description="The id of a job started in the background.")
    wait_s: float = Field(
        0, ge=0, le=100, description="Wait up to this many seconds for the job to end."
    )


class JobInfo(BaseModel):
    job_id: str
    action: str
    status: str
    started_at: float
    ended_at: float | None
    progress: float | None
    result: Any = None
    error: dict[str, Any] | None = None


@hookimpl
def register_actions(register: ActionRegistrar, hub: Hub) -> None:
    @register("hub.ping", mutating=False)
    async def ping(req: Ping, ctx: Context) -> Pong:
        """Answer at once: proves the hub is up and measures a round trip."""
        return Pong(echo=req.echo, version=version(), correlation_id=ctx.correlation_id)

    @register("hub.status", mutating=False)
    async def status() -> HubStatus:
        """The hub's pid, home, uptime, plugins and subscriber buffers (with dropped counts)."""
        return HubStatus.model_validate(hub.status())

    @register("hub.job", mutating=False)
    async def job(req: JobRef) -> JobInfo:
        """The state of a background job, optionally waiting for it to end."""
        import anyio

        found = hub.bus.job(req.job_id)
        if found is None:
            raise InvalidInput.from_errors(
                "hub.job", [{"field": "job_id", "message": f"no job {req.job_id!r}"}]
            )
        if req.wait_s:
            with anyio.move_on_after(req.wait_s):
                await found.done.wait()
        return JobInfo.model_validate(found.info())
