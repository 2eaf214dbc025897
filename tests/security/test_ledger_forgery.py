"""Someone gets a message onto the ledger's stream (an anonymous client on a cluster without auth,
a bug): it must neither stop the receipts nor join the chain. The ledger chains only from receipts
it verifies with its own key, and `writ ledger verify` names the foreign message."""

from __future__ import annotations

import asyncio
import uuid
from pathlib import Path

import pytest
from scene import Scene

from writ_common import commands, subjects
from writ_common.envelope import Producer, encode, make_envelope
from writ_common.events import Receipt
from writ_common.receipts import verify_receipt

pytestmark = [pytest.mark.security, pytest.mark.asyncio(loop_scope="session")]


async def test_a_forged_message_on_the_ledger_stream_neither_halts_nor_joins_the_chain(
    scene: Scene, tmp_path: Path
) -> None:
    await scene.load_policy(
        f'@id("count-ok") permit(principal, action, resource == Tool::"{scene.server}/count");', tmp_path
    )
    first = await scene.agent.call(f"{scene.server}/count", {"token": scene.suffix}, timeout=30)
    # A receipt-shaped lie, signed by no one's ledger key, stored as the newest ledger message.
    lie = Receipt(
        position=first.position + 1000,
        intent_id=f"in-lie{uuid.uuid4().hex[:10]}",
        agent_id=scene.agent.agent_id,
        status="succeeded",
        stage="execute",
        code="ok",
        reason="forged",
        event_ids=[],
        recorded_at=first.recorded_at,
        ledger_key_id="forged",
        prev_hash=first.receipt_hash,
        receipt_hash="sha256:" + "f" * 64,
        signature="AAAA",
    )
    envelope = make_envelope(
        lie,
        producer=Producer(service="ledger", instance="x", version="0"),
        agent_id=lie.agent_id,
        intent_id=lie.intent_id,
    )
    js = scene.operator.jetstream()
    forged = await js.publish(subjects.receipt_subject(lie.agent_id, lie.intent_id), encode(envelope))
    try:
        second = await scene.agent.call(f"{scene.server}/count", {"token": scene.suffix}, timeout=30)
        assert second.status == "succeeded"
        assert second.position > first.position and second.receipt_hash != lie.receipt_hash
        verify_receipt(second, str((await commands.call(scene.operator, "ledger", "public_key", {}))["public_key"]))
        # Chained from the ledger's own receipts, never from the lie.
        assert second.prev_hash != lie.receipt_hash
        verified = await asyncio.to_thread(scene.writ, "ledger", "verify")
        assert "foreign_message" in verified.output, verified.output
    finally:
        await js.delete_msg(subjects.LEDGER_STREAM, forged.seq)
