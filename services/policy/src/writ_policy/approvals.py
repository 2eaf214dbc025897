"""Policy's rules for approval decisions: which grant holds, when the quorum is reached, when a
request expires, who may see and decide which request. Pure functions over the folded intent and
the approver directory; an expected "no" is a :class:`Refusal`."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any

import msgspec

from writ_common import events as ev
from writ_common.approvals import Approver, Decision, decision_statement
from writ_common.envelope import parse_time
from writ_common.errors import Refusal
from writ_common.fold import IntentView
from writ_common.signing import SignatureInvalid, verify


class SignedDecision(msgspec.Struct, frozen=True, kw_only=True):
    """What an approver sends: a decision on a digest, signed with the approver's own key."""

    intent_id: str
    agent_id: str
    approver_id: str
    decision: Decision
    approval_digest: str
    signed_at: str
    signature: str
    comment: str = ""


def judge(view: IntentView, signed: SignedDecision, approver: Approver | None, *, now: datetime) -> list[ev.Payload]:
    """The events a decision leads to. A decision that does not hold yields only
    ``approval.refused`` with its reason (plus the expiry if the request has run out)."""
    request = view.approval
    assert request is not None and view.approval_pending
    refusal = objection(view, signed, approver, now=now)
    if refusal is not None:
        ran_out_too = expire(view) if refusal.code == "approval_expired" else []
        return [refused(signed, refusal), *ran_out_too]
    assert approver is not None
    fields = {
        "approver_id": approver.approver_id,
        "key_id": approver.key_id,
        "approval_digest": signed.approval_digest,
        "signed_at": signed.signed_at,
        "signature": signed.signature,
        "comment": signed.comment,
    }
    if signed.decision == "deny":
        why = f": {signed.comment}" if signed.comment else ""
        return [
            ev.ApprovalDenied(**fields),
            ev.IntentDenied(
                policy_digest=request.policy_digest,
                policy_ids=request.policy_ids,
                code="approval_denied",
                reason=f"approval_denied: {approver.approver_id} denied the call{why}",
            ),
        ]
    granted = ev.ApprovalGranted(**fields)
    approvers = [g.approver_id for g in view.grants] + [approver.approver_id]
    if len(approvers) < request.quorum:
        return [granted]
    return [
        granted,
        ev.IntentAuthorized(
            policy_digest=request.policy_digest,
            policy_ids=request.policy_ids,
            reasons=[f"approved by {', '.join(approvers)} (quorum {request.quorum})"],
        ),
    ]


def objection(view: IntentView, signed: SignedDecision, approver: Approver | None, *, now: datetime) -> Refusal | None:
    """Why a decision does not hold, checked in this order; None: it holds."""
    request = view.approval
    assert request is not None
    if approver is None:
        return Refusal(code="unknown_approver", reason=f"no approver {signed.approver_id!r} is registered")
    if not approver.active:
        return Refusal(code="approver_inactive", reason=f"approver {approver.approver_id!r} is not active")
    if signed.intent_id != view.intent_id or signed.approval_digest != request.approval_digest:
        return Refusal(
            code="digest_mismatch",
            reason=f"signed digest {signed.approval_digest} is not this request's {request.approval_digest}"
            " (a different call, tool version or policy than the one requested)",
        )
    if not signed_by(approver, signed):
        return Refusal(
            code="bad_signature",
            reason=f"the decision is not signed by approver {approver.approver_id!r}'s registered key",
        )
    if request.group not in approver.groups:
        return Refusal(
            code="not_in_group",
            reason=f"{approver.approver_id!r} is not in group {request.group!r}, which decides this call",
        )
    if now > parse_time(request.expires_at):
        return Refusal(code="approval_expired", reason=f"the request expired at {request.expires_at}")
    owner = view.authenticated.owner if view.authenticated else None
    if owner and approver.approver_id == owner and not request.owner_may_approve:
        return Refusal(
            code="owner_not_allowed",
            reason=f"{owner!r} owns agent {view.agent_id!r}; policy does not let an owner approve",
        )
    if any(g.approver_id == approver.approver_id for g in view.grants):
        return Refusal(
            code="duplicate_approver",
            reason=f"{approver.approver_id!r} has already approved; quorum needs distinct approvers",
        )
    return None


def signed_by(approver: Approver, signed: SignedDecision) -> bool:
    """The decision's statement verifies under the approver's registered key."""
    statement = decision_statement(
        intent_id=signed.intent_id,
        approval_digest=signed.approval_digest,
        decision=signed.decision,
        approver_id=signed.approver_id,
        signed_at=signed.signed_at,
        comment=signed.comment,
    )
    try:
        verify(approver.public_key, statement, signed.signature)
    except SignatureInvalid:
        return False
    return True


def refused(signed: SignedDecision, refusal: Refusal) -> ev.ApprovalRefused:
    """The record of a decision that does not hold (its reason reads ``code: sentence``)."""
    return ev.ApprovalRefused(
        approver_id=signed.approver_id, decision=signed.decision, code=refusal.code, reason=str(refusal)
    )


def expire(view: IntentView) -> list[ev.Payload]:
    """The request ran out without a quorum: the intent ends as expired."""
    request = view.approval
    assert request is not None
    granted = [g.approver_id for g in view.grants]
    return [
        ev.ApprovalExpired(expires_at=request.expires_at, granted_by=granted),
        ev.IntentExpired(
            stage="authorize",
            reason=f"approval request expired at {request.expires_at} with {len(granted)} of {request.quorum} approvals",
        ),
    ]


def is_expired(view: IntentView, now: datetime) -> bool:
    return view.approval is not None and view.approval_pending and now > parse_time(view.approval.expires_at)


def ran_out(request: ev.ApprovalRequested, now: datetime) -> bool:
    """The request's time is up (the expiry loop's rule, before it folds the intent)."""
    return now > parse_time(request.expires_at)


def expiry(view: IntentView, now: datetime) -> list[ev.Payload]:
    """The events that end a request past its time; nothing if it was answered or has time left."""
    return expire(view) if is_expired(view, now) else []


def not_open(view: IntentView, intent_id: str) -> Refusal | None:
    """Already decided? A request that is no longer pending takes no more decisions."""
    if view.approval_pending:
        return None
    return Refusal(code="not_pending", reason=f"intent {intent_id!r} is {view.status}; it takes no more decisions")


def groups_of(approvers: Mapping[str, Approver], approver_id: str | None) -> tuple[str, ...] | Refusal | None:
    """The groups whose requests ``approver_id`` may see and decide; None when no approver is named
    (an operator's view: everything)."""
    if approver_id is None:
        return None
    approver = approvers.get(approver_id)
    if approver is None:
        return Refusal(code="unknown_approver", reason=f"no approver {approver_id!r} is registered")
    return approver.groups


def visible(view: IntentView, groups: tuple[str, ...] | None) -> bool:
    """An open request that ``groups`` may decide (None: any)."""
    request = view.approval
    return view.approval_pending and request is not None and (groups is None or request.group in groups)


def hidden_from(view: IntentView, approver_id: str | None, groups: tuple[str, ...] | None) -> Refusal | None:
    """Showing one request: refused to an approver outside the group that decides it."""
    request = view.approval
    assert request is not None
    if groups is not None and request.group not in groups:
        return Refusal(code="forbidden", reason=f"{approver_id!r} is not in group {request.group!r}")
    return None


def speaks_for(approver_id: str, claimed: str | None) -> Refusal | None:
    """On an approver's own subject the subject names the caller; a body naming anyone else is
    refused, not quietly ignored."""
    if claimed is None or claimed == approver_id:
        return None
    return Refusal(
        code="approver_mismatch", reason=f"this connection speaks for approver {approver_id!r}, not {claimed!r}"
    )


def approval_picture(view: IntentView) -> dict[str, Any]:
    """Everything a person needs to judge the call, and the digest they sign."""
    request, intent, planned = view.approval, view.submitted, view.planned
    assert request is not None and intent is not None and planned is not None
    return {
        "intent_id": view.intent_id,
        "agent_id": view.agent_id,
        "on_behalf_of": intent.on_behalf_of,
        "owner": view.authenticated.owner if view.authenticated else None,
        "tool": f"{planned.server}/{planned.tool}",
        "tool_digest": planned.tool_digest,
        "annotations": msgspec.to_builtins(planned.annotations),
        "arguments": intent.arguments,
        "args_digest": planned.args_digest,
        "policy_digest": request.policy_digest,
        "policy_ids": request.policy_ids,
        "approvers": request.group,
        "quorum": request.quorum,
        "owner_may_approve": request.owner_may_approve,
        "granted_by": [g.approver_id for g in view.grants],
        "deadline": intent.deadline,
        "expires_at": request.expires_at,
        "approval_digest": request.approval_digest,
        "status": view.status,
    }


def decision_reply(view: IntentView, payloads: list[ev.Payload]) -> dict[str, Any]:
    """Tell the approver what their decision did."""
    request = view.approval
    assert request is not None
    granted = [g.approver_id for g in view.grants]
    outcome, code, reason = "recorded", "ok", ""
    for payload in payloads:
        match payload:
            case ev.ApprovalRefused():
                outcome, code, reason = "refused", payload.code, payload.reason
                break
            case ev.ApprovalGranted():
                outcome = "granted"
                granted.append(payload.approver_id)
            case ev.IntentAuthorized():
                outcome, reason = "authorized", payload.reasons[0]
            case ev.IntentDenied():
                outcome, code, reason = "denied", payload.code, payload.reason
            case _:
                pass
    return {"outcome": outcome, "code": code, "reason": reason, "granted_by": granted, "quorum": request.quorum}
