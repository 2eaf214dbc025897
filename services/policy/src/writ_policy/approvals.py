"""Policy's rules for approval decisions: which grant holds, when the quorum is reached, when a
request expires. Pure functions over the folded intent and the approver directory."""

from __future__ import annotations

from datetime import datetime

import msgspec

from writ_common import events as ev
from writ_common.approvals import Approver, Decision, decision_statement
from writ_common.envelope import parse_time
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

    def refuse(code: str, reason: str) -> list[ev.Payload]:
        return [
            ev.ApprovalRefused(
                approver_id=signed.approver_id, decision=signed.decision, code=code, reason=f"{code}: {reason}"
            )
        ]

    if approver is None:
        return refuse("unknown_approver", f"no approver {signed.approver_id!r} is registered")
    if not approver.active:
        return refuse("approver_inactive", f"approver {approver.approver_id!r} is not active")
    if signed.intent_id != view.intent_id or signed.approval_digest != request.approval_digest:
        return refuse(
            "digest_mismatch",
            f"signed digest {signed.approval_digest} is not this request's {request.approval_digest}"
            " (a different call, tool version or policy than the one requested)",
        )
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
        return refuse(
            "bad_signature", f"the decision is not signed by approver {approver.approver_id!r}'s registered key"
        )
    if request.approvers not in approver.groups:
        return refuse(
            "not_in_group", f"{approver.approver_id!r} is not in group {request.approvers!r}, which decides this call"
        )
    if now > parse_time(request.expires_at):
        return [
            *refuse("approval_expired", f"the request expired at {request.expires_at}"),
            *expire(view),
        ]
    owner = view.authenticated.owner if view.authenticated else None
    if owner and approver.approver_id == owner and not request.owner_may_approve:
        return refuse(
            "owner_not_allowed", f"{owner!r} owns agent {view.agent_id!r}; policy does not let an owner approve"
        )
    if any(g.approver_id == approver.approver_id for g in view.grants):
        return refuse(
            "duplicate_approver", f"{approver.approver_id!r} has already approved; quorum needs distinct approvers"
        )
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
