"""An agent tries to fill the plane's disk: every stream is bounded, the intents and ledger streams
refuse new writes when full (`storage_full`, nothing already stored is dropped), one intent's
subject holds a bounded number of messages, and no message exceeds the payload limit."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from nats.js.errors import APIError
from scene import Scene

from writ.runtime.processes import ManagedProcess, start_nats
from writ.sdk import new_intent, publish_intent, sign_intent
from writ_common import subjects
from writ_common.bus import StorageRefused, direct_get_batch
from writ_common.signing import generate_key
from writ_common.streams import MAX_MSGS_PER_INTENT_SUBJECT, StreamLimits, ensure_streams

pytestmark = [pytest.mark.security, pytest.mark.asyncio(loop_scope="session")]


async def test_an_agent_flooding_its_own_intent_subject_is_capped(scene: Scene) -> None:
    intent_id = f"in-flood{uuid.uuid4().hex[:12]}"
    subject = subjects.intent_subject(scene.agent.agent_id, intent_id, "intent.submitted")
    js = scene.agent.nc.jetstream()
    stored = refused = 0
    for n in range(MAX_MSGS_PER_INTENT_SUBJECT + 20):
        try:
            await js.publish(subject, b"x" * 64, headers={"Nats-Msg-Id": f"flood-{intent_id}-{n}"})
            stored += 1
        except APIError as exc:
            assert exc.err_code == 10077, exc
            refused += 1
    assert stored == MAX_MSGS_PER_INTENT_SUBJECT and refused == 20


async def test_an_oversized_message_never_reaches_the_bus(scene: Scene) -> None:
    subject = subjects.intent_subject(scene.agent.agent_id, f"in-big{uuid.uuid4().hex[:12]}", "intent.submitted")
    with pytest.raises(nats.errors.MaxPayloadError):
        await scene.agent.nc.jetstream().publish(subject, b"x" * (3 * 1024 * 1024))


@pytest.fixture
def small_bus(tmp_path: Path) -> Iterator[ManagedProcess]:
    proc = start_nats(tmp_path / "store")
    try:
        yield proc
    finally:
        proc.stop()


async def test_a_full_intents_stream_refuses_new_submissions_and_keeps_every_stored_one(
    small_bus: ManagedProcess,
) -> None:
    nc = await nats.connect(small_bus.url)
    try:
        await ensure_streams(nc.jetstream(), limits=StreamLimits(intents_max_bytes=64 * 1024))
        key = generate_key()
        accepted: list[str] = []
        with pytest.raises(StorageRefused) as full:
            for n in range(1000):
                intent = sign_intent(
                    new_intent("flooder", "t", {"n": n, "pad": "p" * 200}, idempotency_key=f"k{n}"), key
                )
                accepted.append((await publish_intent(nc, intent)).intent_id)
        assert full.value.code == "storage_full" and "WRIT_INTENTS_MAX_BYTES" in full.value.message
        assert 10 < len(accepted) < 1000
        kept = await direct_get_batch(nc, subjects.INTENTS_STREAM, "writ.intent.>")
        assert len(kept) == len(accepted), "nothing stored was dropped to make room"
    finally:
        await nc.close()
