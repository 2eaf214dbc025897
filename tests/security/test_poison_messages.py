"""Poison messages: input that no decoder should be asked to parse (nested thousands deep, too large)
is dead-lettered once and acked; no consumer, view or command handler is stalled by it."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import nats
import pytest
from inprocess import Spine

from writ_common import commands, subjects
from writ_common.bus import direct_get_batch
from writ_common.envelope import UndecodableEvent, decode
from writ_common.signing import generate_key, public_key_b64

pytestmark = [pytest.mark.security, pytest.mark.asyncio(loop_scope="session")]


def deeply_nested_intent(agent_id: str, intent_id: str, depth: int = 3000) -> bytes:
    """About 6 KB: an ``intent.submitted`` whose argument nests ``depth`` arrays."""
    nested = "[" * depth + "]" * depth
    return (
        '{"id":"01J0000000000000000000000","type":"intent.submitted","version":1,'
        '"occurred_at":"2026-01-01T00:00:00Z","producer":{"service":"sdk","instance":"i","version":"0"},'
        f'"agent_id":"{agent_id}","intent_id":"{intent_id}","payload":{{"agent_id":"{agent_id}",'
        f'"idempotency_key":"k","tool":"get_current_time","arguments":{{"x":{nested}}},'
        '"issued_at":"2026-01-01T00:00:00Z","nonce":"n"}}'
    ).encode()


async def dead_letters(spine: Spine, service: str, subject: str) -> list[dict[str, str]]:
    """The dead letters of ``subject``: one copy, parked by ``service`` or by another consumer that
    met it first (the ledger reads every intent event too)."""
    found = []
    for msg in await direct_get_batch(spine.nc, subjects.DLQ_STREAM, "writ.dlq.>"):
        headers = dict(msg.headers or {})
        if headers.get("Writ-Original-Subject") == subject:
            found.append(headers)
    return found


async def acked(spine: Spine, consumer: str, seq: int, timeout: float = 15.0) -> bool:
    """Whether ``consumer`` acked every message up to stream sequence ``seq`` within ``timeout``."""
    for _ in range(int(timeout / 0.05)):
        info = await spine.js.consumer_info(subjects.INTENTS_STREAM, consumer)
        if info.ack_floor.stream_seq >= seq and not info.num_ack_pending:
            return True
        await asyncio.sleep(0.05)
    return False


async def views_caught_up(spine: Spine, timeout: float = 15.0) -> bool:
    for _ in range(int(timeout / 0.05)):
        status = await commands.call(spine.nc, "ledger", "views_status", {})
        if all(s["events_behind"] == 0 for s in status["streams"]):
            return True
        await asyncio.sleep(0.05)
    return False


def subject_for(spine: Spine, tag: str) -> tuple[str, str]:
    intent_id = f"in-{tag}{uuid.uuid4().hex[:12]}"
    return intent_id, subjects.intent_subject(spine.agent.agent_id, intent_id, "intent.submitted")


async def test_deeply_nested_message_is_dead_lettered_not_redelivered(spine: Spine) -> None:
    intent_id, subject = subject_for(spine, "deep")
    ack = await spine.js.publish(subject, deeply_nested_intent(spine.agent.agent_id, intent_id))
    assert await acked(spine, "writ-identity", ack.seq), "identity never acked the poison message"
    letters = await dead_letters(spine, "identity", subject)
    assert [h["Writ-Dead-Letter-Code"] for h in letters] == ["too_deep"]
    info = await spine.js.consumer_info(subjects.INTENTS_STREAM, "writ-identity")
    assert info.num_redelivered == 0


async def test_oversized_message_is_refused_by_the_bus_and_by_the_decoder(spine: Spine) -> None:
    _, subject = subject_for(spine, "huge")
    padding = json.dumps({"id": "A" * (3 * 1024 * 1024)}).encode()  # over the 2 MiB any Writ event fits in
    # The bus's max_payload (2 MiB) refuses it before anything is stored...
    with pytest.raises(nats.errors.MaxPayloadError):
        await spine.js.publish(subject, padding)
    # ...and were a server configured larger, the decoder refuses it before decoding a byte of it.
    with pytest.raises(UndecodableEvent) as refused:
        decode(padding, subject=subject)
    assert refused.value.code == "too_large"


async def test_a_flood_of_poison_messages_does_not_stall_identity(spine: Spine) -> None:
    # More than identity's max_ack_pending (256): were they left unacked, nothing else would flow.
    for _ in range(260):
        intent_id, subject = subject_for(spine, "flood")
        await spine.js.publish(subject, deeply_nested_intent(spine.agent.agent_id, intent_id))
    receipt = await spine.agent.call("get_current_time", {"timezone": "UTC"}, timeout=60)
    assert receipt.status in {"succeeded", "denied"}, receipt.reason


async def test_deeply_nested_message_does_not_freeze_the_views(spine: Spine) -> None:
    intent_id, subject = subject_for(spine, "views")
    await spine.js.publish(subject, deeply_nested_intent(spine.agent.agent_id, intent_id))
    assert await views_caught_up(spine), "the views stopped at the poison message"


async def test_deeply_nested_control_event_does_not_stall_a_control_follower(spine: Spine) -> None:
    # Whoever may write a control stream, a poison event there must not stop identity's follower
    # from seeing the agents registered after it.
    poison = deeply_nested_intent("x", "in-x").replace(b"intent.submitted", b"identity.agent_registered")
    await spine.js.publish(subjects.agent_subject(f"poison{uuid.uuid4().hex[:6]}"), poison)
    agent_id = f"late{uuid.uuid4().hex[:6]}"
    body = {"agent_id": agent_id, "public_key": public_key_b64(generate_key())}
    await commands.call(spine.nc, "identity", "register_agent", body)
    shown = await commands.call(spine.nc, "identity", "show_agent", {"agent_id": agent_id})
    assert shown["agent_id"] == agent_id


async def test_deeply_nested_command_body_is_refused_not_an_internal_error(spine: Spine) -> None:
    body = b'{"filter":' + b"[" * 3000 + b"]" * 3000 + b"}"
    reply = await spine.nc.request(subjects.command_subject("policy", "list_approvals"), body, timeout=10)
    answer: dict[str, Any] = json.loads(reply.data)
    assert (answer["ok"], answer["code"]) == (False, "invalid_request"), answer
    assert "too_deep" in answer["message"]
