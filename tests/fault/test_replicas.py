"""Two processes of every service share one plane: each intent is handled by whichever replica
pulls it, slow calls are covered by the Redis lease, and killing executor replicas mid-call still
leaves exactly one receipt per intent and no call run twice."""

from __future__ import annotations

import asyncio
import contextlib
import random
import uuid
from collections import Counter
from collections.abc import Iterator

import pytest
from rig import Rig, all_receipts, assert_chain_verifies, receipts_of, row_counts, submit_rows

from waiting import wait_until
from writ.runtime.processes import free_port
from writ.runtime.supervisor import SERVICES, Plane
from writ_common.bus import read_history

pytestmark = [pytest.mark.fault, pytest.mark.asyncio(loop_scope="session")]

ROWS, SLOW_CALLS, KILLS = 80, 16, 4


@pytest.fixture(scope="module")
def fault_plane(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Plane]:
    """Two processes of every service on one plane."""
    data_dir = tmp_path_factory.mktemp("replicas") / "data"
    with Plane(data_dir, nats_port=free_port(), redis_port=free_port(), replicas=dict.fromkeys(SERVICES, 2)) as plane:
        plane.wait_ready(timeout=90)
        yield plane


async def kill_executors(rig: Rig) -> None:
    """SIGKILL the two executor replicas in turn at random moments, each restarted by the supervisor."""
    rng = random.Random("replica-kills")
    for k in range(KILLS):
        await asyncio.sleep(rng.uniform(0.5, 1.5))
        name = ("executor", "executor-2")[k % 2]
        restarts = rig.plane.status_of(name).restarts
        await asyncio.to_thread(rig.plane.kill_service, name)
        await wait_until(lambda n=name, r=restarts: rig.plane.status_of(n).restarts > r, 30, f"{name} restarted")


async def test_replicas_share_the_work_and_killing_executors_runs_nothing_twice(rig: Rig) -> None:
    run = f"replicas-{uuid.uuid4().hex[:6]}"
    kills = asyncio.create_task(kill_executors(rig))
    try:
        slow = {}
        for i in range(SLOW_CALLS):  # calls long enough to be in flight when a replica dies
            token = f"{run}-slow-{i}"
            submission = await rig.agent.submit("faulty/slow", {"seconds": 0.8, "token": token})
            slow[submission.intent_id] = token
        rows = await submit_rows(rig, ROWS, run)
        await kills
    finally:
        kills.cancel()  # a failure above must not leave the killer running
        with contextlib.suppress(asyncio.CancelledError):
            await kills
    tokens = {**rows, **slow}
    receipts = await receipts_of(rig, list(tokens), timeout=180)

    per_intent = Counter(r.intent_id for r in await all_receipts(rig.nc))
    assert {i: per_intent[i] for i in tokens if per_intent[i] != 1} == {}, "exactly one receipt per intent"
    written = row_counts(rig.sqlite_db) + row_counts(rig.faulty_db)
    assert all(written[t] <= 1 for t in tokens.values()), "no call ran twice"
    executed_by: set[str] = set()
    for intent_id, receipt in receipts.items():
        history = await read_history(rig.nc, "fault-agent", intent_id)
        types = [e.type for e in history.events]
        executed_by |= {e.envelope.producer.instance for e in history.events if e.type == "execution.started"}
        if receipt.status == "succeeded":
            assert written[tokens[intent_id]] == 1, f"{intent_id}: succeeded but wrote {written[tokens[intent_id]]}"
        else:
            assert receipt.status == "outcome_unknown", f"{intent_id}: {receipt.status}: {receipt.reason}"
            assert types[-2:] == ["execution.started", "execution.outcome_unknown"], types
    # Two live executors (and their restarts) took calls: the work really was shared.
    assert len(executed_by) >= 2, executed_by
    await assert_chain_verifies(rig)
