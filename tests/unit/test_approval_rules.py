"""Policy's approval rules (writ_policy.approvals.judge and expire) as pure functions: which signed
decision counts, when a quorum authorizes, and every way a decision is refused with its code."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from writ.approver import signed_decision
from writ.sdk import new_intent
from writ_common import events as ev
from writ_common.approvals import Approver
from writ_common.envelope import Producer, decode, encode, make_envelope
from writ_common.fold import IntentView, fold_intent
from writ_common.ids import derive_intent_id
from writ_common.signing import generate_key, key_id, public_key_b64
from writ_policy.approvals import SignedDecision, expire, is_expired, judge

pytestmark = pytest.mark.unit

NOW = datetime(2026, 11, 29, 12, 0, tzinfo=UTC)
EXPIRES = (NOW + timedelta(hours=1)).isoformat().replace("+00:00", "Z")
KEYS = {name: generate_key() for name in ("carol", "dave", "alice", "eve")}
INTENT = new_intent("bot", "bank/pay", {"amount": 50}, idempotency_key="pay-1")
INTENT_ID = derive_intent_id("bot", "pay-1")
DIGEST = "sha256:" + "ab" * 32


def approver(name: str, groups: tuple[str, ...] = ("payments",), *, active: bool = True) -> Approver:
    public = public_key_b64(KEYS[name])
    return Approver(name, public, key_id(public), groups, active)


def view(*, quorum: int = 1, owner_may_approve: bool = False, grants: tuple[str, ...] = ()) -> IntentView:
    producer = Producer(service="test", instance="t", version="0")
    payloads: list[ev.Payload] = [
        INTENT,
        ev.IntentAuthenticated(key_id="ed25519:x", owner="alice", teams=[]),
        ev.ApprovalRequested(
            approval_digest=DIGEST,
            policy_digest="sha256:policy",
            policy_ids=["payments-need-approval"],
            group="payments",
            quorum=quorum,
            expires_at=EXPIRES,
            owner_may_approve=owner_may_approve,
            tool="bank/pay",
        ),
    ]
    for name in grants:
        payloads.append(
            ev.ApprovalGranted(
                approver_id=name, key_id="k", approval_digest=DIGEST, signed_at="t", signature="s", comment=""
            )
        )
    events = [
        decode(encode(make_envelope(p, producer=producer, intent_id=INTENT_ID, agent_id="bot")), seq=i + 1)
        for i, p in enumerate(payloads)
    ]
    return fold_intent(events)


def decision(name: str, choice: str = "grant", **overrides: Any) -> SignedDecision:
    request = {"intent_id": INTENT_ID, "agent_id": "bot", "approval_digest": overrides.pop("digest", DIGEST)}
    body = signed_decision(overrides.pop("key", KEYS[name]), name, request, choice, overrides.pop("comment", ""))  # type: ignore[arg-type]
    return SignedDecision(**{**body, **overrides})


def refusal(events: list[ev.Payload]) -> str:
    assert isinstance(events[0], ev.ApprovalRefused), events
    return events[0].code


def test_one_grant_reaches_a_quorum_of_one_and_authorizes() -> None:
    events = judge(view(), decision("carol"), approver("carol"), now=NOW)
    assert [type(e) for e in events] == [ev.ApprovalGranted, ev.IntentAuthorized]
    authorized = events[1]
    assert isinstance(authorized, ev.IntentAuthorized)
    assert authorized.policy_ids == ["payments-need-approval"] and "carol" in authorized.reasons[0]


def test_below_the_quorum_a_grant_is_recorded_and_nothing_is_authorized() -> None:
    events = judge(view(quorum=2), decision("carol"), approver("carol"), now=NOW)
    assert [type(e) for e in events] == [ev.ApprovalGranted]


def test_the_second_distinct_approver_completes_a_quorum_of_two() -> None:
    events = judge(view(quorum=2, grants=("carol",)), decision("dave"), approver("dave"), now=NOW)
    assert [type(e) for e in events] == [ev.ApprovalGranted, ev.IntentAuthorized]


def test_the_same_approver_twice_does_not_make_a_quorum() -> None:
    events = judge(view(quorum=2, grants=("carol",)), decision("carol"), approver("carol"), now=NOW)
    assert refusal(events) == "duplicate_approver"


def test_a_denial_ends_the_intent_denied_with_the_comment() -> None:
    events = judge(view(), decision("carol", "deny", comment="not today"), approver("carol"), now=NOW)
    assert [type(e) for e in events] == [ev.ApprovalDenied, ev.IntentDenied]
    denied = events[1]
    assert isinstance(denied, ev.IntentDenied) and denied.code == "approval_denied" and "not today" in denied.reason


@pytest.mark.parametrize(
    ("who", "signed_by", "overrides", "code"),
    [
        (None, "carol", {}, "unknown_approver"),
        (approver("carol", active=False), "carol", {}, "approver_inactive"),
        (approver("carol"), "carol", {"digest": "sha256:" + "cd" * 32}, "digest_mismatch"),
        (approver("carol"), "carol", {"key": KEYS["eve"]}, "bad_signature"),
        (approver("carol"), "carol", {"comment": "edited after signing"}, "bad_signature"),
        (approver("carol", groups=("auditors",)), "carol", {}, "not_in_group"),
        (approver("alice"), "alice", {}, "owner_not_allowed"),
    ],
)
def test_a_decision_that_does_not_hold_is_refused_with_its_code(
    who: Approver | None, signed_by: str, overrides: dict[str, Any], code: str
) -> None:
    signed = decision(signed_by, **{k: v for k, v in overrides.items() if k != "comment"})
    if "comment" in overrides:  # the signature covers the comment: change it after signing
        signed = SignedDecision(
            **{**{f: getattr(signed, f) for f in signed.__struct_fields__}, "comment": overrides["comment"]}
        )
    events = judge(view(), signed, who, now=NOW)
    assert refusal(events) == code
    assert len(events) == 1  # nothing else happens
    refused = events[0]
    assert isinstance(refused, ev.ApprovalRefused) and refused.reason.startswith(f"{code}: ")


def test_an_owner_may_approve_where_policy_says_so() -> None:
    events = judge(view(owner_may_approve=True), decision("alice"), approver("alice"), now=NOW)
    assert [type(e) for e in events] == [ev.ApprovalGranted, ev.IntentAuthorized]


def test_a_decision_after_the_deadline_is_refused_and_ends_the_request() -> None:
    late = NOW + timedelta(hours=2)
    events = judge(view(), decision("carol"), approver("carol"), now=late)
    assert refusal(events) == "approval_expired"
    assert [type(e) for e in events[1:]] == [ev.ApprovalExpired, ev.IntentExpired]
    assert is_expired(view(), late) and not is_expired(view(), NOW)


def test_expiry_says_how_many_of_the_quorum_were_granted() -> None:
    expired = expire(view(quorum=3, grants=("carol",)))
    assert isinstance(expired[0], ev.ApprovalExpired) and expired[0].granted_by == ["carol"]
    assert isinstance(expired[1], ev.IntentExpired) and "1 of 3" in expired[1].reason
