"""Cedar type confusion: a policy that errors on an argument of an unexpected type must deny the
call, never be skipped; numbers reach Cedar with their type."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from writ_common import events as ev
from writ_common import subjects
from writ_common.envelope import Producer, StoredEvent, decode, encode, make_envelope
from writ_common.fold import IntentView, fold_intent
from writ_common.ids import derive_intent_id
from writ_policy.domain import compile_bundle, decide

pytestmark = [pytest.mark.security, pytest.mark.unit]

PRODUCER = Producer(service="test", instance="t", version="0")
POLICY = """
@id("no-big-payments")
forbid(principal, action, resource) when { context.arguments.amount > 1000 };

@id("payments")
permit(principal, action == Action::"call_tool", resource) when { resource.name == "pay" };
"""


def planned_view(arguments: dict[str, Any]) -> IntentView:
    intent = ev.IntentSubmitted(
        agent_id="bot", idempotency_key="k", tool="pay", arguments=arguments, issued_at="x", nonce="n"
    )
    planned = ev.IntentPlanned(
        server="bank", tool="pay", tool_digest="sha256:t", args_digest="hmac-sha256:a", annotations=ev.ToolAnnotations()
    )
    intent_id = derive_intent_id("bot", "k")
    events: list[StoredEvent] = []
    for seq, payload in enumerate((intent, planned), start=1):
        env = make_envelope(payload, producer=PRODUCER, intent_id=intent_id, agent_id="bot")
        subject = subjects.intent_subject("bot", intent_id, env.type)
        events.append(decode(encode(env), seq=seq, subject=subject))
    return fold_intent(events)


def decision(arguments: dict[str, Any]) -> ev.Payload:
    return decide(planned_view(arguments), compile_bundle(POLICY), now=datetime.now(UTC))


def test_an_integer_sent_as_a_float_cannot_slip_past_a_forbid() -> None:
    denied = decision({"amount": 5000.0})
    assert isinstance(denied, ev.IntentDenied), denied
    assert denied.code == "forbidden" and denied.policy_ids == ["no-big-payments"]


def test_an_argument_of_the_wrong_type_is_a_policy_error_denial_naming_the_policy() -> None:
    for amount in ("5000", 5000.5, [5000], {"value": 5000}, True):
        denied = decision({"amount": amount})
        assert isinstance(denied, ev.IntentDenied), (amount, denied)
        assert denied.code == "policy_error", (amount, denied)
        assert "no-big-payments" in denied.reason and "no-big-payments" in denied.policy_ids


def test_a_missing_argument_a_forbid_reads_is_a_denial_not_a_permit() -> None:
    denied = decision({})
    assert isinstance(denied, ev.IntentDenied) and denied.code == "policy_error", denied


def test_an_ordinary_call_is_still_decided_as_before() -> None:
    allowed = decision({"amount": 10})
    assert isinstance(allowed, ev.IntentAuthorized) and allowed.policy_ids == ["payments"]
    assert isinstance(decision({"amount": 5000}), ev.IntentDenied)
