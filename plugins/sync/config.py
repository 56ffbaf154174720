"""The sync service's configuration: the `sync` manifest section."""

from __future__ import annotations

import socket
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fleetbus.bus.config import ConfigSection

MAX_ATTEMPTS_ENV = "FLEETBUS_SYNC_MAX_ATTEMPTS"


class SyncSpec(BaseModel):
    """Where finished runs and tasks are reported, and how hard to try."""

    model_config = ConfigDict(extra="forbid")

    url: str | None = Field(
        None, description="Base URL of the fleet API (https://...); none: sync is idle."
    )
    token_env: str = Field(
        "FLEETBUS_SYNC_TOKEN",
        description="Name of the environment variable holding the bearer token (the token "
        "itself is never written in a manifest, a log or the database).",
    )
    max_attempts: int = Field(
        100, ge=1, description=f"Tries of one batch before it is dropped ({MAX_ATTEMPTS_ENV} wins)."
    )
    agent_id: str | None = Field(None, description="This hub's agent id; default: the host name.")
    fleet_node_id: str | None = Field(None, description="This node's id; default: the host name.")
    batch_size: int = Field(100, ge=1, le=1000, description="Records per POST.")
    timeout_s: float = Field(10, gt=0, description="Seconds one request may take.")

    @field_validator("url")
    @classmethod
    def _http_url(cls, value: str | None) -> str | None:
        if value is None:
            return None
        parts = urlsplit(value)
        if parts.scheme not in ("https", "http") or not parts.hostname:
            raise ValueError("must be an http:// or https:// URL with a host")
        return value.rstrip("/")

    @property
    def agent(self) -> str:
        return self.agent_id or socket.gethostname()

    @property
    def node(self) -> str:
        return self.fleet_node_id or socket.gethostname()


SYNC = ConfigSection("sync", SyncSpec, "Reporting finished runs and tasks to a fleet API.")
