"""Admission control on the session plane: a burst of calls beyond a route's limit gets prompt,
explicit ``overloaded`` answers with a retry-after (the calls did not run), every intent ends in
exactly one receipt, and the route takes calls again at once when the burst is over."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest
from scene import Scene

from writ.sdk import retry_after
from writ_common import subjects
from writ_common.bus import direct_get_batch
from writ_common.envelope import decode
from writ_common.events import Receipt

pytestmark = [pytest.mark.security, pytest.mark.asyncio(loop_scope="session")]

SLOW = 3.0  # seconds each admitted call takes: an overloaded answer must come well before
LIMIT = 32  # WRIT_ADMISSION_INITIAL_LIMIT: where a route starts, before any call has ended
BURST = LIMIT + 8


async def test_a_burst_past_the_route_limit_gets_overloaded_answers_and_one_receipt_each(
    scene: Scene, tmp_path: Path
) -> None:
    await scene.load_policy(
        f'@id("all") permit(principal, action, resource) when {{ resource.server == "{scene.server}" }};', tmp_path
    )
    began = time.monotonic()
    submitted = await asyncio.gather(
        *(
            scene.agent.submit(f"{scene.server}/slow", {"seconds": SLOW, "token": f"{scene.suffix}-{n}"})
            for n in range(BURST)
        )
    )

    async def answer(intent_id: str) -> tuple[Receipt, float]:
        receipt = await scene.receipt(intent_id, timeout=60)
        return receipt, time.monotonic() - began

    answers = await asyncio.gather(*(answer(s.intent_id) for s in submitted))
    ran = [r for r, _ in answers if r.status == "succeeded"]
    refused = [(r, at) for r, at in answers if r.code == "overloaded"]
    assert len(ran) + len(refused) == BURST, Counter((r.status, r.code) for r, _ in answers)
    assert len(ran) >= LIMIT, "the initial limit's worth ran"
    assert len(refused) >= BURST - LIMIT - 2, "the rest was refused (a couple may find a place freed by then)"
    for receipt, at in refused:
        assert receipt.status == "failed" and "did not run" in receipt.reason
        assert at < SLOW, f"an overloaded answer came after {at:.1f} s: not prompt"
        wait = retry_after(receipt)
        assert wait is not None and 0.1 <= wait <= 30, receipt.result
    assert scene.rows() == len(ran), "an overloaded call never reached the tool"

    stored = await direct_get_batch(
        scene.operator, subjects.LEDGER_STREAM, subjects.agent_receipts(scene.agent.agent_id)
    )
    per_intent = Counter(decode(m.data).envelope.intent_id for m in stored)
    assert {s.intent_id: per_intent[s.intent_id] for s in submitted} == {s.intent_id: 1 for s in submitted}

    # The burst is over: the same route takes a call at once.
    again = await scene.agent.call(f"{scene.server}/slow", {"seconds": 0.1, "token": uuid.uuid4().hex}, timeout=10)
    assert again.status == "succeeded", again.reason
