"""Lost answers are resolved by looking, not guessed: the embedded nats-server is SIGKILLed (and
restarted) while intents to a non-idempotent row-writing tool are in flight, so appends around
``execution.started`` and the verdict lose their acks. The executor never dies here, so no intent
may end ``outcome_unknown``: every call whose start was stored is made once and its outcome
recorded; a start never stored is simply made (once) later."""

from __future__ import annotations

import asyncio
import random
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
from rig import Rig, all_receipts, assert_chain_verifies, receipts_of, row_counts, submit_rows

from writ.runtime.processes import free_port
from writ.runtime.supervisor import Plane

pytestmark = [pytest.mark.fault, pytest.mark.asyncio(loop_scope="session")]

INTENTS = 80
KILLS = 3


@pytest.fixture(scope="module")
def fault_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    with Plane(tmp_path_factory.mktemp("lost-acks") / "data", nats_port=free_port(), redis_port=free_port()) as plane:
        plane.wait_ready(timeout=60)
        yield plane


async def kill_nats_repeatedly(rig: Rig, kills: int) -> None:
    rng = random.Random("lost-acks")
    for _ in range(kills):
        await asyncio.sleep(rng.uniform(0.3, 1.0))
        await asyncio.to_thread(rig.plane.kill_service, "nats")
        await asyncio.to_thread(rig.plane.wait_ready, 90)


async def test_killing_nats_under_load_makes_no_outcome_unknown_and_nothing_twice(rig: Rig) -> None:
    run = f"lost-{uuid.uuid4().hex[:6]}"
    executor_restarts = rig.plane.status_of("executor").restarts
    kills = asyncio.create_task(kill_nats_repeatedly(rig, KILLS))
    tokens = await submit_rows(rig, INTENTS, run)
    await kills
    receipts = await receipts_of(rig, list(tokens), timeout=180)

    assert rig.plane.status_of("executor").restarts == executor_restarts, "the executor never died"
    per_intent = Counter(r.intent_id for r in await all_receipts(rig.nc))
    wrong = {i: per_intent[i] for i in tokens if per_intent[i] != 1}
    assert not wrong, f"every intent has exactly one receipt: {wrong}"
    rows = row_counts(rig.sqlite_db)
    statuses = Counter(r.status for r in receipts.values())
    assert statuses == {"succeeded": INTENTS}, {
        i: (r.status, r.reason) for i, r in receipts.items() if r.status != "succeeded"
    }
    for intent_id in receipts:
        assert rows[tokens[intent_id]] == 1, f"{intent_id}: wrote {rows[tokens[intent_id]]} rows"
    await assert_chain_verifies(rig)
