"""Hostile and malformed messages on every consumed subject: each is dead-lettered with a reason or
ends in a rejection receipt, nothing else changes, and the consumers keep serving (property tests)."""

from __future__ import annotations

import json
import uuid

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from inprocess import DEFAULT_POLICY, Spine

from waiting import eventually
from writ.sdk import fetch_receipt, publish_intent
from writ_common import commands, subjects
from writ_common.bus import direct_get_batch, read_history
from writ_common.envelope import Producer, encode, make_envelope
from writ_common.events import IntentSubmitted
from writ_common.ids import derive_intent_id

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

CONSUMED = ("submitted", "authenticated", "planned", "authorized")
CONSUMER = {"submitted": "identity", "authenticated": "registry", "planned": "policy", "authorized": "executor"}

tricky_text = st.one_of(
    st.text(max_size=40),
    st.sampled_from(
        ["\u202egnp.exe", "a\u0000b", "ｆｕｌｌｗｉｄｔｈ", "\ud7ff" * 3, "😀" * 10, "../../etc", "*", ">", "a.b"]
    ),
)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | tricky_text,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(tricky_text, inner, max_size=4),
    max_leaves=12,
)
garbage = st.one_of(
    st.binary(max_size=300),
    json_values.map(lambda v: json.dumps(v).encode()),
    st.builds(
        lambda kind, version, payload: json.dumps(
            {
                "id": "x",
                "type": kind,
                "version": version,
                "occurred_at": "2026-01-01T00:00:00Z",
                "producer": {"service": "evil", "instance": "i", "version": "0"},
                "payload": payload,
            }
        ).encode(),
        st.sampled_from(["intent.submitted", "intent.planned", "intent.authorized", "no.such", "intent.submitted "]),
        st.integers(min_value=-3, max_value=1000),
        json_values,
    ),
    st.just(b'{"id": "' + b"A" * 200_000 + b'"}'),  # huge field
)


async def dead_letters_from(spine: Spine, subject: str) -> list[str]:
    found = []
    for service in set(CONSUMER.values()) | {"ledger"}:
        for msg in await direct_get_batch(spine.nc, subjects.DLQ_STREAM, subjects.dlq_subject(service)):
            headers = msg.headers or {}
            if headers.get("Writ-Original-Subject") == subject:
                found.append(headers.get("Writ-Dead-Letter-Reason", ""))
    return found


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=garbage, event=st.sampled_from(CONSUMED))
async def test_garbage_is_dead_lettered_with_a_reason_and_changes_nothing(
    spine: Spine, data: bytes, event: str
) -> None:
    intent_id = f"in-fuzz{uuid.uuid4().hex[:16]}"
    subject = f"writ.intent.{spine.agent.agent_id}.{intent_id}.{event}"
    await spine.js.publish(subject, data)

    async def dead_lettered() -> list[str] | None:
        return await dead_letters_from(spine, subject) or None

    reasons = await eventually(dead_lettered, 4, f"{subject} dead-lettered")
    assert all(reasons), reasons
    history = await read_history(spine.nc, spine.agent.agent_id, intent_id)
    assert history.events == []  # nothing was appended in answer to garbage
    assert await fetch_receipt(spine.nc, intent_id) is None


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tool=tricky_text, arguments=st.dictionaries(tricky_text, json_values, max_size=4), key=tricky_text)
async def test_hostile_but_well_formed_intents_end_in_one_rejection_receipt(
    spine: Spine, tool: str, arguments: dict[str, object], key: str
) -> None:
    await commands.call(spine.nc, "policy", "load", {"cedar": DEFAULT_POLICY})
    try:
        submission = await spine.agent.submit(tool or "x", arguments, idempotency_key=f"{key}-{uuid.uuid4()}")
    except ValueError:  # the SDK refuses what it cannot sign (JCS domain), before anything is sent
        return
    receipt = await spine.agent.receipt(submission.intent_id, timeout=30)
    assert receipt.status in {"rejected", "denied", "succeeded", "failed"}
    assert receipt.reason.startswith(receipt.code) or receipt.status in {"succeeded", "failed"}


async def test_an_envelope_naming_another_intent_than_its_subject_is_refused(spine: Spine) -> None:
    intent = IntentSubmitted(
        agent_id=spine.agent.agent_id, idempotency_key="k", tool="t", arguments={}, issued_at="x", nonce="n"
    )
    envelope = make_envelope(
        intent, producer=Producer(service="evil", instance="i", version="0"), intent_id="in-other", agent_id="mallory"
    )
    subject = f"writ.intent.{spine.agent.agent_id}.in-fuzzsubj{uuid.uuid4().hex[:8]}.submitted"
    await spine.js.publish(subject, encode(envelope))

    async def dead_lettered() -> list[str] | None:
        return await dead_letters_from(spine, subject) or None

    reasons = await eventually(dead_lettered, 4, f"{subject} dead-lettered")
    assert any("but its envelope names" in r for r in reasons), reasons


async def test_an_intent_that_cannot_be_canonicalized_is_rejected_not_retried_forever(spine: Spine) -> None:
    intent = IntentSubmitted(
        agent_id=spine.agent.agent_id,
        idempotency_key=f"huge-{uuid.uuid4()}",
        tool="get_current_time",
        arguments={"n": 2**60},
        issued_at="2026-01-01T00:00:00Z",
        nonce="n",
        signature="AAAA",
    )
    intent_id = derive_intent_id(intent.agent_id, intent.idempotency_key)
    submission = await publish_intent(spine.nc, intent)
    assert submission.intent_id == intent_id
    receipt = await spine.agent.receipt(intent_id, timeout=30)
    assert (receipt.status, receipt.code) == ("rejected", "unsignable_intent")


async def test_the_consumers_still_serve_afterwards(spine: Spine) -> None:
    await commands.call(spine.nc, "policy", "load", {"cedar": DEFAULT_POLICY})
    receipt = await spine.agent.call("get_current_time", {"timezone": "UTC"}, timeout=30)
    assert receipt.status == "succeeded", receipt.reason
