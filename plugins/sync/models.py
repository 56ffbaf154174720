"""The sync service's action inputs and results."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class SyncStatus(BaseModel):
    configured: bool = Field(description="Whether sync.url is set; without it sync is idle.")
    url: str | None
    note: str = Field(description="What sync is doing, in words.")
    queued: int = Field(description="Records waiting to be sent.")
    oldest_age_s: float | None = Field(description="Age of the oldest record waiting.")
    sent: int
    dropped: int
    attempts: int = Field(description="Tries of the batch at the head of the line so far.")
    next_attempt_at: float | None = Field(description="When the head batch is tried again.")
    last_push_at: float | None
    last_error: str


class RecordsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(50, ge=1, le=1000, description="How many, newest first.")


class AuditRecord(BaseModel):
    direction: str
    outcome: str
    agent_id: str
    batch: str | None
    attempts: int
    reason: str
    payload_bytes: int
    items: int
    at: float


class Records(BaseModel):
    records: list[AuditRecord]


class PullInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    since: str | None = Field(None, description="Only context newer than this (the API's cursor).")


class Pulled(BaseModel):
    fresh: bool = Field(description="False: the remote could not be reached; this is the cache.")
    fetched_at: float | None
    reason: str
    context: Any = None
