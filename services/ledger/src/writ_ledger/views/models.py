"""The views API's request and response models: FastAPI builds the OpenAPI document from these
and the routes in :mod:`writ_ledger.views.api`."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

SIMULATE_MAX_BYTES = 512 * 1024  # of Cedar in one /policy/simulate request


class IntentsQuery(BaseModel):
    """Filters of ``GET /intents``; all optional, combined with AND."""

    model_config = ConfigDict(extra="forbid")

    agent: str | None = Field(default=None, description="agent id")
    tool: str | None = Field(default=None, description="tool as requested, its name, or server/tool")
    status: str | None = Field(default=None, description="e.g. succeeded, denied, failed, awaiting_approval")
    since: str | None = Field(default=None, description="submitted at or after (RFC 3339)")
    until: str | None = Field(default=None, description="submitted before (RFC 3339)")
    reason: str | None = Field(default=None, description="a reason code, or text the reason contains")
    limit: int = Field(default=50, ge=1, le=500)
    cursor: str | None = Field(default=None, description="next_cursor of the previous page")


class StatsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    by: str = Field(default="agent", pattern="^(agent|tool|hour)$")
    since: str | None = None
    until: str | None = None


class IntentRow(BaseModel):
    """One intent: who, what, how it went, when each stage happened and how long it took (ms)."""

    model_config = ConfigDict(extra="allow")

    intent_id: str
    agent_id: str
    on_behalf_of: str | None = None
    tool: str | None = None
    server: str | None = None
    tool_name: str | None = None
    tool_digest: str | None = None
    status: str
    stage: str | None = None
    code: str | None = None
    reason: str | None = None
    attempts: int
    retries: int
    submitted_seq: int
    submitted_at: str
    ended_at: str | None = None
    total_ms: float | None = None


class PlaneSnapshot(BaseModel):
    """The Plane page (an operator token): processes, consumer lag, dead letters, breakers, the
    executor's loop changes, quarantined tools with their definition diff, rate-limit windows. A part that could not be
    read holds ``{"problem": ...}`` instead."""

    supervisor: dict[str, Any]
    processes: list[dict[str, Any]]
    consumers: Any
    dead_letters: Any
    breakers: Any
    loop_changes: Any = Field(
        default=None,
        description="the executor's loops (concurrency per server, admission per route) over the last hour:"
        " each change and verdict with old and new limit and the reason, newest first",
    )
    quarantined: list[dict[str, Any]]
    rate_limits: Any
    views_lag: list[StreamLag] = Field(description="how far the ledger's views are behind each stream")


class IntentPage(BaseModel):
    intents: list[IntentRow]
    next_cursor: str | None = Field(description="pass as cursor for the next page; null on the last page")


class ReceiptCheck(BaseModel):
    """The receipt as the ledger checked it just now, against its own public key."""

    hash_ok: bool
    signature_ok: bool
    chain_ok: bool | None = Field(
        description="null for the first receipt, or when the previous one is not in the views"
    )
    prev_position: int | None
    ledger_key_id: str
    problem: str | None = None


class IntentDetail(BaseModel):
    """An intent with its full event history (payloads), decisions, approval, attempts and receipt.
    For a summary-scope token, every value-bearing field (arguments, results, idempotency key,
    comments, notes) reads as a marker and ``withheld`` names those fields."""

    intent: IntentRow
    events: list[dict[str, Any]]
    decisions: list[dict[str, Any]]
    approval: dict[str, Any] | None
    executions: list[dict[str, Any]]
    receipt: dict[str, Any] | None
    withheld: list[str] = Field(default_factory=list, description="payload fields replaced by a marker")
    verification: ReceiptCheck | None = Field(
        default=None, description="the receipt checked by the ledger: hash, signature, link to the previous receipt"
    )


class StatsRow(BaseModel):
    key: str
    calls: int
    succeeded: int
    denials: int
    failures: int
    rejections: int
    expirations: int
    ended: int
    p50_ms: float | None
    p95_ms: float | None
    p99_ms: float | None


class Stats(BaseModel):
    by: str
    rows: list[StatsRow]


class StreamLag(BaseModel):
    stream: str
    position: int
    head: int
    events_behind: int
    seconds_behind: float


class Status(BaseModel):
    streams: list[StreamLag]


class ShadowQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    digest: str | None = Field(default=None, description="only this shadow bundle (its digest)")
    since: str | None = Field(default=None, description="decided at or after (RFC 3339)")
    limit: int = Field(default=50, ge=1, le=500, description="disagreements to list, newest first")


class RolloutsQuery(BaseModel):
    model_config = ConfigDict(extra="forbid")

    limit: int = Field(default=20, ge=1, le=500, description="rollouts to list, newest first")


class RolloutsReport(BaseModel):
    """The canary rollouts, newest first: the slice, the triggers, how each ended and the signals
    that decided it, and the decisions made under the candidate by kind."""

    rollouts: list[dict[str, Any]]


class ShadowReport(BaseModel):
    """Per shadow bundle: decisions recorded beside the enforced ones, agreed, disagreed (by
    enforced -> shadow kind); then each disagreement."""

    bundles: list[dict[str, Any]]
    disagreements: list[dict[str, Any]]


class SimulateRequest(BaseModel):
    """A candidate Cedar bundle and which recorded intents to replay it over."""

    model_config = ConfigDict(extra="forbid")

    cedar: str = Field(max_length=SIMULATE_MAX_BYTES)
    since: str | None = Field(default="7d", description="a span (7d, 12h, 30m) or an RFC 3339 time; null: all")
    agent: str | None = None
    tool: str | None = Field(default=None, description="server/tool or its name")
    examples: int = Field(default=3, ge=0, le=50, description="example intent ids per change (full scope only)")


class Simulation(BaseModel):
    """The candidate's validation errors, then how its decisions differ from the enforced bundle's
    on the same intents. A summary-scope token reads the counts, without example intents."""

    validation_errors: list[str]
    candidate_digest: str
    current_digest: str | None
    since: str | None
    evaluated: int
    unchanged: int
    changed: int
    current: dict[str, int]
    candidate: dict[str, int]
    changes: list[dict[str, Any]]
