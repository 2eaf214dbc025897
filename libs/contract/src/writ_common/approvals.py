"""Approvers and their signed decisions: what an approver signs, and the directory of approvers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from writ_common import events as ev
from writ_common.digest import approval_digest, canonical_json
from writ_common.envelope import StoredEvent
from writ_common.fold import IntentView
from writ_common.signing import key_id

Decision = Literal["grant", "deny"]


def decision_statement(
    *, intent_id: str, approval_digest: str, decision: Decision, approver_id: str, signed_at: str, comment: str
) -> bytes:
    """The exact bytes an approver signs: this decision, on this digest, for this intent."""
    return canonical_json(
        {
            "intent_id": intent_id,
            "approval_digest": approval_digest,
            "decision": decision,
            "approver_id": approver_id,
            "signed_at": signed_at,
            "comment": comment,
        }
    )


def request_digest(
    view: IntentView,
    *,
    policy_digest: str,
    approval_group: str,
    quorum: int,
    owner_may_approve: bool,
    expires_at: str,
) -> str:
    """The approval digest of a request on this intent: the call as the history states it, under
    what policy decided. Policy computes it to ask; the executor recomputes it before calling."""
    intent, planned = view.submitted, view.planned
    assert intent is not None and planned is not None
    return approval_digest(
        intent_id=view.intent_id or "",
        agent_id=view.agent_id or "",
        on_behalf_of=intent.on_behalf_of,
        server=planned.server,
        tool=planned.tool,
        tool_digest=planned.tool_digest,
        args_digest=planned.args_digest,
        policy_digest=policy_digest,
        approval_group=approval_group,
        quorum=quorum,
        owner_may_approve=owner_may_approve,
        expires_at=expires_at,
        deadline=intent.deadline,
    )


@dataclass(frozen=True, slots=True)
class Approver:
    approver_id: str
    public_key: str
    key_id: str
    groups: tuple[str, ...]
    active: bool
    bus_key: str | None = None


def apply_approver_event(approvers: dict[str, Approver], event: StoredEvent) -> None:
    """Fold one identity control event into the approver directory."""
    if isinstance(event.payload, ev.ApproverRegistered):
        p = event.payload
        approvers[p.approver_id] = Approver(
            p.approver_id, p.public_key, key_id(p.public_key), tuple(p.groups), p.active, p.bus_key
        )
