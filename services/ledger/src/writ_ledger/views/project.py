"""Applying one stored event to the view tables: a pure function of (tables, event).

Each table is derived from exactly one stream (intents -> intent tables and rollups, identity ->
agents and reader tokens, registry -> servers and tools, ledger -> receipts), so the result does
not depend on how the streams interleave while they are followed. Times come from the events'
``occurred_at``, never from the clock.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC
from typing import Any

import msgspec

from writ_common import events as ev
from writ_common import subjects
from writ_common.envelope import StoredEvent, parse_time
from writ_common.receipts import ending
from writ_common.signing import key_id

_json = msgspec.json.Encoder()

FINAL = frozenset(ev.TERMINAL_STATUS.values()) | {"reconciled_succeeded", "reconciled_failed", "retried"}
# The status an open intent shows, one name per stage (events.STAGE_STATUS).
SUBMITTED, AUTHENTICATED, PLANNED = (
    ev.STAGE_STATUS[t] for t in ("intent.submitted", "intent.authenticated", "intent.planned")
)
AWAITING, AUTHORIZED, EXECUTING = (
    ev.STAGE_STATUS[t] for t in ("approval.requested", "intent.authorized", "execution.started")
)
# Which rollup counter a terminal status adds to.
ROLLUP_COLUMN = {
    "succeeded": "succeeded",
    "denied": "denials",
    "failed": "failures",
    "outcome_unknown": "failures",
    "rejected": "rejections",
    "expired": "expirations",
}


def dumps(value: Any) -> str:
    return _json.encode(value).decode()


def ms_between(start: str | None, end: str | None) -> float | None:
    if not start or not end:
        return None
    try:
        return round((parse_time(end) - parse_time(start)).total_seconds() * 1000.0, 3)
    except ValueError:
        return None


def hour_of(timestamp: str) -> str:
    """``2026-01-02T03`` (UTC) of an RFC 3339 time: the rollups' bucket."""
    try:
        return parse_time(timestamp).astimezone(UTC).strftime("%Y-%m-%dT%H")
    except ValueError:
        return timestamp[:13]


def apply_event(db: sqlite3.Connection, stream: str, event: StoredEvent) -> None:
    """Apply one decoded event of ``stream`` (the caller tracks the position in the same transaction)."""
    if stream == subjects.INTENTS_STREAM:
        apply_intent_event(db, event)
    elif stream == subjects.IDENTITY_STREAM:
        apply_identity_event(db, event)
    elif stream == subjects.REGISTRY_STREAM:
        apply_registry_event(db, event)
    elif stream == subjects.LEDGER_STREAM:
        apply_receipt(db, event)
    elif stream == subjects.POLICY_STREAM:
        apply_rollout_event(db, event)


# -- intents ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class IntentRow:
    """The intents row as it stood before the event: what a step needs to know of the intent so far."""

    intent_id: str
    status: str
    submitted_at: str | None
    authenticated_at: str | None
    planned_at: str | None
    requested_at: str | None
    started_at: str | None
    hour: str
    tool: str | None


def apply_intent_event(db: sqlite3.Connection, event: StoredEvent) -> None:
    env, p = event.envelope, event.payload
    intent_id, agent_id = env.intent_id, env.agent_id
    if not intent_id or not agent_id:
        return
    if isinstance(p, ev.IntentSubmitted):
        _submitted(db, event, p)
    row = _intent_row(db, intent_id, agent_id)
    if row is None:
        return  # an event without its intent, or naming another agent's intent: nothing to show
    db.execute(
        "INSERT OR IGNORE INTO intent_events(seq, intent_id, type, event_id, occurred_at, producer, causation_id,"
        " payload) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        (event.seq, intent_id, env.type, env.id, env.occurred_at, env.producer.service, env.causation_id, dumps(p)),
    )
    if isinstance(p, ev.PolicyShadowDecided):
        _shadow(db, event, p, row.tool)
        return  # advisory: the intent's course is not changed by it
    if isinstance(p, ev.ExecutionReconciled):
        _reconciled(db, intent_id, row.status, p, env.occurred_at)
        return
    if row.status in FINAL:
        # After the end only a reconciliation changes the intent; later attempts' rows still land.
        if isinstance(p, ev.ExecutionStarted | ev.ExecutionAttemptFailed):
            _execution(db, intent_id, p, env.occurred_at)
        return
    step = STEPS.get(type(p))
    if step is not None:
        step(db, event, p, row)
    status = ev.TERMINAL_STATUS.get(env.type)
    if status is not None:
        _ended(db, event, status, row)
        if (column := ROLLUP_COLUMN.get(status)) is not None:  # a cancelled call counts among calls only
            _rollup(db, row.hour, agent_id, row.tool or "", column)


def _intent_row(db: sqlite3.Connection, intent_id: str, agent_id: str) -> IntentRow | None:
    """The intent's row, if there is one and it is ``agent_id``'s."""
    row = db.execute(
        "SELECT agent_id, status, submitted_at, authenticated_at, planned_at, approval_requested_at, started_at,"
        " hour, tool FROM intents WHERE intent_id = ?",
        (intent_id,),
    ).fetchone()
    if row is None or row[0] != agent_id:
        return None
    return IntentRow(intent_id, *row[1:])


# One step per intent event that moves an intent on (terminal events end it in ``_ended``).


def _authenticated(db: sqlite3.Connection, event: StoredEvent, _p: ev.IntentAuthenticated, row: IntentRow) -> None:
    at = event.envelope.occurred_at
    _update(db, row.intent_id, at, status=AUTHENTICATED, authenticated_at=at,
            authenticate_ms=ms_between(row.submitted_at, at))  # fmt: skip


def _planned(db: sqlite3.Connection, event: StoredEvent, p: ev.IntentPlanned, row: IntentRow) -> None:
    at = event.envelope.occurred_at
    _update(db, row.intent_id, at, status=PLANNED, planned_at=at, server=p.server, tool_name=p.tool,
            tool_digest=p.tool_digest, args_digest=p.args_digest,
            plan_ms=ms_between(row.authenticated_at, at))  # fmt: skip


def _approval_requested(db: sqlite3.Connection, event: StoredEvent, p: ev.ApprovalRequested, row: IntentRow) -> None:
    at, intent_id = event.envelope.occurred_at, row.intent_id
    _decision(db, event, intent_id, kind="approval_requested", policy_digest=p.policy_digest, policy_ids=p.policy_ids)
    db.execute(
        "INSERT OR IGNORE INTO approvals(intent_id, requested_seq, requested_at, approver_group, quorum,"
        " expires_at, approval_digest, policy_digest, status, granted_by)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, 'pending', '[]')",
        (intent_id, event.seq, at, p.group, p.quorum, p.expires_at, p.approval_digest, p.policy_digest),
    )
    _update(db, intent_id, at, status=AWAITING, approval_requested_at=at,
            authorize_ms=ms_between(row.planned_at, at))  # fmt: skip


def _approval_granted(db: sqlite3.Connection, event: StoredEvent, p: ev.ApprovalGranted, row: IntentRow) -> None:
    _approver_decision(db, event, row.intent_id, approver_id=p.approver_id, decision="granted")
    db.execute(
        "UPDATE approvals SET granted_by = json_insert(granted_by, '$[#]', ?) WHERE intent_id = ?",
        (p.approver_id, row.intent_id),
    )


def _approval_denied(db: sqlite3.Connection, event: StoredEvent, p: ev.ApprovalDenied, row: IntentRow) -> None:
    _approver_decision(db, event, row.intent_id, approver_id=p.approver_id, decision="denied")
    db.execute(
        "UPDATE approvals SET status = 'denied', denied_by = ?, decided_at = ? WHERE intent_id = ?",
        (p.approver_id, event.envelope.occurred_at, row.intent_id),
    )


def _approval_refused(db: sqlite3.Connection, event: StoredEvent, p: ev.ApprovalRefused, row: IntentRow) -> None:
    _approver_decision(
        db, event, row.intent_id, approver_id=p.approver_id, decision="refused", code=p.code, reason=p.reason
    )


def _approval_expired(db: sqlite3.Connection, event: StoredEvent, _p: ev.ApprovalExpired, row: IntentRow) -> None:
    db.execute(
        "UPDATE approvals SET status = 'expired', decided_at = ? WHERE intent_id = ? AND status = 'pending'",
        (event.envelope.occurred_at, row.intent_id),
    )


def _authorized(db: sqlite3.Connection, event: StoredEvent, p: ev.IntentAuthorized, row: IntentRow) -> None:
    at, intent_id = event.envelope.occurred_at, row.intent_id
    _decision(db, event, intent_id, kind="authorized", policy_digest=p.policy_digest, policy_ids=p.policy_ids,
              reasons=p.reasons)  # fmt: skip
    db.execute(
        "UPDATE approvals SET status = 'granted', decided_at = ? WHERE intent_id = ? AND status = 'pending'",
        (at, intent_id),
    )
    if row.requested_at:
        _update(db, intent_id, at, status=AUTHORIZED, decided_at=at, approval_ms=ms_between(row.requested_at, at))
    else:
        _update(db, intent_id, at, status=AUTHORIZED, decided_at=at, authorize_ms=ms_between(row.planned_at, at))


def _started(db: sqlite3.Connection, event: StoredEvent, p: ev.ExecutionStarted, row: IntentRow) -> None:
    at = event.envelope.occurred_at
    _execution(db, row.intent_id, p, at)
    db.execute(
        "UPDATE intents SET status = ?, attempts = MAX(attempts, ?), retries = MAX(retries, ? - 1),"
        " started_at = COALESCE(started_at, ?), updated_at = ? WHERE intent_id = ?",
        (EXECUTING, p.attempt, p.attempt, at, at, row.intent_id),
    )


def _attempt_failed(db: sqlite3.Connection, event: StoredEvent, p: ev.ExecutionAttemptFailed, row: IntentRow) -> None:
    at = event.envelope.occurred_at
    _execution(db, row.intent_id, p, at)
    _update(db, row.intent_id, at)


Step = Callable[[sqlite3.Connection, StoredEvent, Any, IntentRow], None]


# payload type -> its step (submitted, the endings, reconciliations and shadow decisions are apart)
def _cancel_requested(db: sqlite3.Connection, event: StoredEvent, _p: ev.Payload, row: IntentRow) -> None:
    """The agent asked to cancel: in the intent's timeline (intent_events); the row changes when a
    stage ends it (``cancelled``), or not at all if its call had already ended."""
    _update(db, row.intent_id, event.envelope.occurred_at)


STEPS: dict[type, Step] = {
    ev.IntentCancelRequested: _cancel_requested,
    ev.IntentAuthenticated: _authenticated,
    ev.IntentPlanned: _planned,
    ev.ApprovalRequested: _approval_requested,
    ev.ApprovalGranted: _approval_granted,
    ev.ApprovalDenied: _approval_denied,
    ev.ApprovalRefused: _approval_refused,
    ev.ApprovalExpired: _approval_expired,
    ev.IntentAuthorized: _authorized,
    ev.ExecutionStarted: _started,
    ev.ExecutionAttemptFailed: _attempt_failed,
}


def _submitted(db: sqlite3.Connection, event: StoredEvent, p: ev.IntentSubmitted) -> None:
    env, at = event.envelope, event.envelope.occurred_at
    inserted = db.execute(
        "INSERT OR IGNORE INTO intents(intent_id, agent_id, on_behalf_of, tool, idempotency_key, status,"
        " submitted_seq, hour, submitted_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (
            env.intent_id,
            env.agent_id,
            p.on_behalf_of,
            p.tool,
            p.idempotency_key,
            SUBMITTED,
            event.seq,
            hour_of(at),
            at,
            at,
        ),
    ).rowcount
    if inserted:
        _rollup(db, hour_of(at), env.agent_id or "", p.tool, "calls")


def _update(db: sqlite3.Connection, intent_id: str, at: str, **columns: Any) -> None:
    sets = "".join(f", {name} = ?" for name in columns)
    db.execute(f"UPDATE intents SET updated_at = ?{sets} WHERE intent_id = ?", (at, *columns.values(), intent_id))


def _ended(db: sqlite3.Connection, event: StoredEvent, status: str, row: IntentRow) -> None:
    p, at, intent_id = event.payload, event.envelope.occurred_at, row.intent_id
    stage, code, reason = ending(p)
    columns: dict[str, Any] = {}
    match p:
        case ev.IntentDenied():
            _decision(
                db,
                event,
                intent_id,
                kind="denied",
                policy_digest=p.policy_digest,
                policy_ids=p.policy_ids,
                code=p.code,
                reason=p.reason,
            )
            if row.requested_at:
                columns["approval_ms"] = ms_between(row.requested_at, at)
            else:
                columns["authorize_ms"] = ms_between(row.planned_at, at)
            columns["decided_at"] = at
        case _:
            pass
    if isinstance(p, ev.ExecutionSucceeded | ev.ExecutionFailed | ev.ExecutionOutcomeUnknown) or (
        isinstance(p, ev.IntentCancelled) and p.attempt
    ):
        _execution(db, intent_id, p, at)
        columns["execute_ms"] = ms_between(row.started_at, at)
    _update(db, intent_id, at, status=status, stage=stage, code=code, reason=reason, ended_at=at,
            total_ms=ms_between(row.submitted_at, at), **columns)  # fmt: skip


def _reconciled(db: sqlite3.Connection, intent_id: str, status: str, p: ev.ExecutionReconciled, at: str) -> None:
    """A person's word on an unknown outcome: the one change allowed after the end."""
    if status != "outcome_unknown":
        return
    settled = {"succeeded": "reconciled_succeeded", "failed": "reconciled_failed", "retry": "retried"}[p.outcome]
    reason = f"reconciled by {p.by}: {p.outcome}"
    reason += (f" as {p.retry_intent_id}" if p.retry_intent_id else "") + (f" ({p.note})" if p.note else "")
    _update(db, intent_id, at, status=settled, code="reconciled", reason=reason)


def _decision(
    db: sqlite3.Connection,
    event: StoredEvent,
    intent_id: str,
    *,
    kind: str,
    policy_digest: str | None,
    policy_ids: list[str],
    code: str | None = None,
    reason: str | None = None,
    reasons: list[str] | None = None,
) -> None:
    db.execute(
        "INSERT OR IGNORE INTO decisions(seq, intent_id, kind, policy_digest, policy_ids, code, reason, reasons,"
        " decided_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (event.seq, intent_id, kind, policy_digest, dumps(policy_ids), code, reason, dumps(reasons or []),
         event.envelope.occurred_at),
    )  # fmt: skip


def _shadow(db: sqlite3.Connection, event: StoredEvent, p: ev.PolicyShadowDecided, requested: str | None) -> None:
    env = event.envelope
    planned = db.execute("SELECT server, tool_name FROM intents WHERE intent_id = ?", (env.intent_id,)).fetchone()
    tool = f"{planned[0]}/{planned[1]}" if planned and planned[0] else requested
    db.execute(
        "INSERT OR IGNORE INTO shadow_decisions(seq, intent_id, agent_id, tool, shadow_digest, shadow_kind,"
        " shadow_policy_ids, shadow_code, enforced_digest, enforced_kind, enforced_policy_ids, enforced_code, agrees,"
        " decided_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (event.seq, env.intent_id, env.agent_id, tool, p.shadow_digest, p.shadow_kind, dumps(p.shadow_policy_ids),
         p.shadow_code or None, p.enforced_digest, p.enforced_kind, dumps(p.enforced_policy_ids),
         p.enforced_code or None, int(p.agrees), env.occurred_at),
    )  # fmt: skip


def _approver_decision(
    db: sqlite3.Connection,
    event: StoredEvent,
    intent_id: str,
    *,
    approver_id: str,
    decision: str,
    code: str | None = None,
    reason: str | None = None,
) -> None:
    db.execute(
        "INSERT OR IGNORE INTO approval_decisions(seq, intent_id, approver_id, decision, code, reason, at)"
        " VALUES (?, ?, ?, ?, ?, ?, ?)",
        (event.seq, intent_id, approver_id, decision, code, reason, event.envelope.occurred_at),
    )


def _execution(db: sqlite3.Connection, intent_id: str, p: ev.Payload, at: str) -> None:
    match p:
        case ev.ExecutionStarted():
            db.execute(
                "INSERT OR IGNORE INTO executions(intent_id, attempt, server, tool, started_at, outcome)"
                " VALUES (?, ?, ?, ?, ?, 'running')",
                (intent_id, p.attempt, p.server, p.tool, at),
            )
        case ev.ExecutionAttemptFailed():
            _end_attempt(db, intent_id, p.attempt, at, outcome="attempt_failed", retryable=1, code=p.code,
                         reason=p.reason, retry_after_ms=p.retry_after_ms)  # fmt: skip
        case ev.ExecutionSucceeded():
            _end_attempt(db, intent_id, p.attempt, at, outcome="succeeded", duration_ms=p.duration_ms)
        case ev.ExecutionFailed():
            _end_attempt(db, intent_id, p.attempt, at, outcome="failed", retryable=int(p.retryable), code=p.code,
                         reason=p.reason)  # fmt: skip
        case ev.ExecutionOutcomeUnknown():
            _end_attempt(
                db, intent_id, p.attempt, at, outcome="outcome_unknown", code="outcome_unknown", reason=p.reason
            )
        case ev.IntentCancelled():  # the attempt it stopped (or did not try again)
            _end_attempt(db, intent_id, p.attempt, at, outcome="cancelled", code="cancelled", reason=p.reason)
        case _:
            pass


def _end_attempt(
    db: sqlite3.Connection,
    intent_id: str,
    attempt: int,
    at: str,
    *,
    outcome: str,
    retryable: int | None = None,
    code: str | None = None,
    reason: str | None = None,
    retry_after_ms: int | None = None,
    duration_ms: float | None = None,
) -> None:
    row = db.execute(
        "SELECT started_at FROM executions WHERE intent_id = ? AND attempt = ?", (intent_id, attempt)
    ).fetchone()
    if row is None:
        # The end of an attempt whose start the log lacks (a failure before execution.started).
        db.execute(
            "INSERT OR IGNORE INTO executions(intent_id, attempt, started_at, outcome) VALUES (?, ?, ?, 'running')",
            (intent_id, attempt, at),
        )
    started_at = row[0] if row else at
    db.execute(
        "UPDATE executions SET ended_at = ?, outcome = ?, retryable = ?, code = ?, reason = ?, retry_after_ms = ?,"
        " duration_ms = ? WHERE intent_id = ? AND attempt = ?",
        (at, outcome, retryable, code, reason, retry_after_ms,
         duration_ms if duration_ms is not None else ms_between(started_at, at), intent_id, attempt),
    )  # fmt: skip


def _rollup(db: sqlite3.Connection, hour: str, agent_id: str, tool: str, column: str) -> None:
    db.execute(
        f"INSERT INTO rollups(hour, agent_id, tool, {column}) VALUES (?, ?, ?, 1)"
        f" ON CONFLICT(hour, agent_id, tool) DO UPDATE SET {column} = {column} + 1",
        (hour, agent_id, tool),
    )


# -- control streams ----------------------------------------------------------------------------


def apply_identity_event(db: sqlite3.Connection, event: StoredEvent) -> None:
    p, at = event.payload, event.envelope.occurred_at
    match p:
        case ev.AgentRegistered():
            db.execute(
                "INSERT OR IGNORE INTO agents(agent_id, owner, teams, acts_for, key_id, registered_at, status)"
                " VALUES (?, ?, ?, ?, ?, ?, 'active')",
                (p.agent_id, p.owner, dumps(p.teams), dumps(p.acts_for), key_id(p.public_key), at),
            )
        case ev.AgentKeyRotated():
            db.execute(
                "UPDATE agents SET key_id = ?, previous_key_id = ?, key_rotated_at = ? WHERE agent_id = ?",
                (key_id(p.public_key), key_id(p.previous_public_key), at, p.agent_id),
            )
        case ev.AgentRevoked():
            db.execute(
                "UPDATE agents SET status = 'revoked', revoked_at = ?, revoked_reason = ? WHERE agent_id = ?",
                (p.revoked_at, p.reason, p.agent_id),
            )
        case ev.AgentSuspended():
            db.execute(
                "UPDATE agents SET status = 'suspended', suspended_at = ?, suspended_reason = ?"
                " WHERE agent_id = ? AND status != 'revoked'",
                (p.suspended_at, p.reason, p.agent_id),
            )
        case ev.AgentReinstated():
            db.execute(
                "UPDATE agents SET status = 'active', suspended_at = NULL, suspended_reason = NULL"
                " WHERE agent_id = ? AND status = 'suspended' AND suspended_at = ?",
                (p.agent_id, p.suspended_at),
            )
        case ev.ReaderTokenIssued():
            db.execute(
                "INSERT INTO reader_tokens(name, token_hash, scope, issued_at) VALUES (?, ?, ?, ?) ON CONFLICT(name)"
                " DO UPDATE SET token_hash = excluded.token_hash, scope = excluded.scope, issued_at = excluded.issued_at,"
                " revoked_at = NULL",
                (p.name, p.token_hash, p.scope, at),
            )
        case ev.ReaderTokenRevoked():
            db.execute("UPDATE reader_tokens SET revoked_at = ? WHERE name = ?", (at, p.name))
        case _:
            pass


def apply_registry_event(db: sqlite3.Connection, event: StoredEvent) -> None:
    p, at = event.payload, event.envelope.occurred_at
    match p:
        case ev.ServerRegistered():
            target = p.url if p.transport == "http" else " ".join([p.command or "", *p.args]).strip()
            db.execute(
                "INSERT INTO servers(name, transport, target, registered_at) VALUES (?, ?, ?, ?) ON CONFLICT(name)"
                " DO UPDATE SET transport = excluded.transport, target = excluded.target",
                (p.name, p.transport, target, at),
            )
        case ev.ServerRemoved():
            # Forgotten as the catalog forgets it; the intents that called its tools keep their rows.
            db.execute("DELETE FROM servers WHERE name = ?", (p.name,))
            db.execute("DELETE FROM tools WHERE server = ?", (p.name,))
        case ev.ToolsDiscovered():
            for tool in p.tools:
                a = tool.annotations
                db.execute(
                    "INSERT OR IGNORE INTO tools(server, tool, tool_digest, description, read_only, destructive,"
                    " idempotent, open_world, state, discovered_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (p.server, tool.name, tool.tool_digest, tool.description, a.read_only, a.destructive,
                     a.idempotent, a.open_world, "accepted" if p.initial else "quarantined", at),
                )  # fmt: skip
        case ev.ToolAccepted():
            db.execute(
                "UPDATE tools SET state = 'accepted', accepted_by = ? WHERE server = ? AND tool = ? AND tool_digest = ?",
                (p.accepted_by, p.server, p.tool, p.tool_digest),
            )
        case ev.ToolOverrideSet():
            for column in ("read_only", "destructive", "idempotent", "open_world"):
                value = getattr(p, column)
                if value is not None:
                    db.execute(
                        f"UPDATE tools SET {column} = ? WHERE server = ? AND tool = ?", (value, p.server, p.tool)
                    )
        case _:
            pass


def apply_rollout_event(db: sqlite3.Connection, event: StoredEvent) -> None:
    """A canary rollout: its declaration, then its one ending (the first one; a later is ignored)."""
    p, at = event.payload, event.envelope.occurred_at
    match p:
        case ev.PolicyRolloutStarted():
            slice_ = dumps({"percent": p.percent, "agents": p.agents})
            db.execute(
                "INSERT OR IGNORE INTO rollouts(rollout_id, seq, candidate_digest, previous_digest, slice, triggers,"
                " promote_after_s, cooldown_s, min_decisions, started_at, status)"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, 'in_progress')",
                (p.rollout_id, event.seq, p.candidate_digest, p.previous_digest, slice_, dumps([t.text for t in p.triggers]),
                 p.promote_after_s, p.cooldown_s, p.min_decisions, at),
            )  # fmt: skip
        case ev.PolicyRolloutPromoted() | ev.PolicyRolloutRolledBack():
            how = ("rolled_back", p.by, p.trigger or None) if isinstance(p, ev.PolicyRolloutRolledBack) else None
            status, by, trigger = how or ("promoted", "controller", None)
            db.execute(
                "UPDATE rollouts SET status = ?, ended_at = ?, ended_by = ?, trigger = ?, reason = ?, signals = ?"
                " WHERE rollout_id = ? AND status = 'in_progress'",
                (status, at, by, trigger, p.reason, dumps(p.signals), p.rollout_id),
            )
        case _:
            pass


def apply_receipt(db: sqlite3.Connection, event: StoredEvent) -> None:
    r = event.payload
    if not isinstance(r, ev.Receipt):
        return
    db.execute(
        "INSERT OR IGNORE INTO receipts(intent_id, position, seq, agent_id, status, stage, code, reason, tool, server,"
        " tool_digest, policy_digest, policy_ids, approvers, receipt_hash, prev_hash, recorded_at, ledger_key_id, body)"
        " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        (r.intent_id, r.position, event.seq, r.agent_id, r.status, r.stage, r.code, r.reason, r.tool, r.server,
         r.tool_digest, r.policy_digest, dumps(r.policy_ids), dumps(r.approvers), r.receipt_hash, r.prev_hash,
         r.recorded_at, r.ledger_key_id, dumps(r)),
    )  # fmt: skip
