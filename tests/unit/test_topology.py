"""The topology table: what each subject may carry and who may say it, and how readers use it."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from writ_common import busauth, subjects, topology
from writ_common import events as ev
from writ_common.envelope import Producer, StoredEvent, UndecodableEvent, decode, encode, make_envelope
from writ_common.fold import fold_intent
from writ_executor.domain import approval_mismatch, needs_recheck, policy_changed
from writ_policy.domain import compile_bundle, decide

pytestmark = pytest.mark.unit

AGENT, INTENT = "bot", "in-abc"
PLANNED = ev.IntentPlanned(server="s", tool="t", tool_digest="d", args_digest="a", annotations=ev.ToolAnnotations())


def on(subject_type: str, payload: ev.Payload, *, producer: str | None = None, seq: int = 1) -> StoredEvent:
    """``payload`` as published on the subject of ``subject_type`` by ``producer``."""
    kind = ev.EVENT_TYPE[type(payload)]
    service = producer or topology.ROUTE[kind].publishers[0]
    env = make_envelope(
        payload, producer=Producer(service=service, instance="i", version="0"), intent_id=INTENT, agent_id=AGENT
    )
    return decode(encode(env), seq=seq, subject=subjects.intent_subject(AGENT, INTENT, subject_type))


def submitted() -> ev.IntentSubmitted:
    return ev.IntentSubmitted(
        agent_id=AGENT, idempotency_key="k", tool="t", arguments={}, issued_at="2026-01-01T00:00:00Z", nonce="n"
    )


def test_every_catalog_type_has_one_route_and_every_intent_token_one_type() -> None:
    assert {r.type for r in topology.ROUTES} == set(ev.CURRENT_VERSION)
    assert len(topology.TYPE_OF_TOKEN) == len(topology.INTENT_ROUTES)


def test_bus_permissions_derive_from_the_table() -> None:
    assert busauth.INTENT_EVENTS_BY_SERVICE["registry"] == ("rejected", "planned", "expired", "cancelled")
    agent = busauth.agent_user("bot", "U" + "A" * 55)
    own = [p for p in agent.publish if p.startswith("writ.intent.")]
    assert own == ["writ.intent.bot.*.submitted", "writ.intent.bot.*.cancel_requested"]
    for service in topology.SERVICES:
        user = busauth.service_user(service, "U" + "A" * 55)
        assert "writ.intent.*.*.submitted" not in user.publish


def test_an_event_is_admitted_on_its_own_subject_from_its_own_publisher() -> None:
    topology.admit(on("intent.planned", PLANNED))
    topology.admit(on("intent.submitted", submitted(), producer="agent-sdk"))


@pytest.mark.parametrize(
    ("subject_type", "producer", "code"),
    [
        ("intent.submitted", "registry", "forged_event"),  # another type on the agent's subject
        ("intent.planned", "policy", "forged_event"),  # the right subject, the wrong publisher
    ],
)
def test_a_forged_event_is_refused_with_a_reason(subject_type: str, producer: str, code: str) -> None:
    with pytest.raises(UndecodableEvent) as refused:
        topology.admit(on(subject_type, PLANNED, producer=producer))
    assert refused.value.code == code and refused.value.reason


def test_a_submission_claiming_a_service_producer_is_refused() -> None:
    with pytest.raises(UndecodableEvent, match="comes from an agent"):
        topology.admit(on("intent.submitted", submitted(), producer="identity"))


def test_the_fold_believes_the_subject_and_the_first_of_each_stage() -> None:
    other = ev.IntentPlanned(
        server="s", tool="forbidden", tool_digest="d", args_digest="a", annotations=ev.ToolAnnotations()
    )
    view = fold_intent(
        [
            on("intent.submitted", submitted(), producer="agent-sdk", seq=1),
            on("intent.planned", PLANNED, seq=2),
            on("intent.submitted", other, seq=3),  # a plan inside a submission: not a plan
            on("intent.planned", other, seq=4),  # a second plan: stages are fenced, the first stands
        ]
    )
    assert view.planned is not None and view.planned.tool == "t"
    assert [e.seq for e in view.events] == [1, 2, 4]


def grant(approver: str, digest: str) -> ev.ApprovalGranted:
    return ev.ApprovalGranted(approver_id=approver, key_id="k", approval_digest=digest, signed_at="x", signature="s")


def test_the_executor_counts_distinct_grants_on_the_digest_against_the_quorum() -> None:
    base = [on("intent.submitted", submitted(), producer="agent-sdk", seq=1), on("intent.planned", PLANNED, seq=2)]
    bundle = compile_bundle('@approval("ops") @quorum("2") permit(principal, action, resource);')
    request = decide(fold_intent(base), bundle, now=datetime(2026, 1, 1, tzinfo=UTC))
    assert isinstance(request, ev.ApprovalRequested) and request.quorum == 2
    digest = request.approval_digest
    authorized = ev.IntentAuthorized(policy_digest=bundle.digest, policy_ids=[])
    requested = [*base, on("approval.requested", request, seq=3)]
    one = fold_intent(
        [*requested, on("approval.granted", grant("a", digest), seq=4), on("intent.authorized", authorized, seq=5)]
    )
    mismatch = approval_mismatch(one)
    assert mismatch is not None and mismatch.code == "approval_mismatch"
    assert mismatch.reason.startswith("1 distinct")
    twice = fold_intent(
        [
            *requested,
            on("approval.granted", grant("a", digest), seq=4),
            on("approval.granted", grant("a", digest), seq=5),
            on("intent.authorized", authorized, seq=6),
        ]
    )
    assert approval_mismatch(twice) is not None
    two = fold_intent(
        [
            *requested,
            on("approval.granted", grant("a", digest), seq=4),
            on("approval.granted", grant("b", digest), seq=5),
            on("intent.authorized", authorized, seq=6),
        ]
    )
    assert approval_mismatch(two) is None


def test_a_call_authorized_under_another_bundle_is_rechecked() -> None:
    authorized = ev.IntentAuthorized(policy_digest="sha256:old", policy_ids=["p"])
    view = fold_intent(
        [
            on("intent.submitted", submitted(), producer="agent-sdk", seq=1),
            on("intent.planned", PLANNED, seq=2),
            on("intent.authorized", authorized, seq=3),
        ]
    )
    assert needs_recheck(view, "sha256:new")
    assert not needs_recheck(view, "sha256:old")
    assert not needs_recheck(view, None)
    refused = policy_changed("forbidden: emergency forbids s/t")
    assert refused.code == "policy_changed" and not refused.retryable and "did not run" in refused.reason


def test_an_open_attempt_may_still_be_running_until_its_verdict() -> None:
    from writ_executor.domain import attempt_may_be_running

    started = ev.ExecutionStarted(attempt=1, idempotency_key="k", server="s", tool="t")
    authorized = ev.IntentAuthorized(policy_digest="p", policy_ids=[])
    base = [
        on("intent.submitted", submitted(), producer="agent-sdk", seq=1),
        on("intent.planned", PLANNED, seq=2),
        on("intent.authorized", authorized, seq=3),
    ]
    assert not attempt_may_be_running(fold_intent(base))
    assert attempt_may_be_running(fold_intent([*base, on("execution.started", started, seq=4)]))
    done = ev.ExecutionSucceeded(attempt=1, result={}, result_digest="r", duration_ms=1)
    finished = [*base, on("execution.started", started, seq=4), on("execution.succeeded", done, seq=5)]
    assert not attempt_may_be_running(fold_intent(finished))
