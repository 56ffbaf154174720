"""The fleet plugin's configuration: the `fleet` manifest section."""

from __future__ import annotations

import re
import socket
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator

from fleetbus.bus.config import ConfigSection

NAME = re.compile(r"[^A-Za-z0-9_-]")


def token_of(text: str) -> str:
    """`text` as one NATS subject token or KV key part: letters, digits, `_` and `-`."""
    return NAME.sub("_", text)[:64] or "_"


class FleetSpec(BaseModel):
    """Where the fleet's NATS server is and how this hub takes part."""

    model_config = ConfigDict(extra="forbid")

    url: list[str] = Field(
        default_factory=list,
        description="NATS server URLs (nats://host:4222), one or a list; none: the hub runs "
        "alone and the fleet plugin is idle.",
    )
    node: str | None = Field(None, description="This hub's node name; default: the host name.")
    credentials_env: str = Field(
        "FLEETBUS_NATS_CREDENTIALS",
        description="Name of the environment variable holding the credentials: a token, an "
        "NKey seed (SU...), or the path of a .creds file. Never written in a manifest or log.",
    )
    ack_wait: float = Field(
        30, ge=1, le=3600, description="Seconds a hub may go silent before its work goes "
        "to another hub (in-progress acks are sent every third of it)."
    )  # fmt: skip
    max_deliver: int = Field(
        5, ge=1, le=100, description="Deliveries of one task (lost hubs) before it is "
        "dead-lettered."
    )  # fmt: skip
    caps: dict[str, int] = Field(
        default_factory=dict,
        description="Fleet-wide most runs at once per agent (agent: n), and of agentic "
        "tasks (tasks: n); the others get default_cap.",
    )
    default_cap: int = Field(16, ge=1, le=10000, description="Fleet-wide cap of other agents.")
    agents: list[str] | None = Field(
        None, description="Agents this hub takes fleet work for; default: every configured one."
    )
    prefix: str = Field(
        "fleetbus",
        description="Subject and stream prefix: fleets sharing one NATS server use different ones.",
    )
    heartbeat_s: float = Field(2, gt=0, le=60, description="Seconds between heartbeats.")

    @field_validator("url", mode="before")
    @classmethod
    def _urls(cls, value: object) -> object:
        if value is None:
            return []
        if isinstance(value, str):
            value = [value]
        if isinstance(value, list):
            for url in value:
                parts = urlsplit(str(url))
                if parts.scheme not in ("nats", "tls", "ws", "wss") or not parts.hostname:
                    raise ValueError(f"{url!r} must be a nats:// (or tls://) URL with a host")
        return value

    @field_validator("prefix")
    @classmethod
    def _prefix(cls, value: str) -> str:
        if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_-]{0,31}", value):
            raise ValueError("must be a letter then up to 31 letters, digits, '_' or '-'")
        return value

    @property
    def node_name(self) -> str:
        return token_of(self.node or socket.gethostname())

    def cap(self, agent: str) -> int:
        return self.caps.get(agent, self.default_cap)


FLEET = ConfigSection("fleet", FleetSpec, "Fleet mode: hubs sharing one queue on NATS JetStream.")
