"""Admission control on the session plane, against a tool that serves one call at a time.

Declared (``writ server add --max-concurrency 1``): Writ never sends it a second call; a burst gets
prompt, explicit ``overloaded`` answers with a retry-after for what it has no place for (those
calls never started), and the calls it took run. Not declared: the calls queue at the tool, their
latency grows, the executor cuts that route's limit (a metric and a log line say so, and the cut
that persists is recorded as an event), and a burst that comes on top is answered at once. Either
way every intent ends in exactly one receipt, and the route takes a call again afterwards."""

from __future__ import annotations

import asyncio
import itertools
import sys
import time
import urllib.request
from collections import Counter
from pathlib import Path

import pytest
from scene import Scene

from writ.sdk import retry_after
from writ_common import events as ev
from writ_common import subjects
from writ_common.bus import direct_get_batch
from writ_common.envelope import decode, parse_time
from writ_common.ids import derive_intent_id

pytestmark = [pytest.mark.security, pytest.mark.asyncio(loop_scope="session")]

SERIAL = Path(__file__).parents[1] / "servers" / "serial_stdio.py"
WORK = 0.3  # seconds per call; the server serves one at a time
FIRST, BURST = 12, 10


def route_limit(scene: Scene, route: str) -> float | None:
    url = scene.plane.metrics_url("executor")
    assert url, "the executor serves /metrics"
    with urllib.request.urlopen(url, timeout=5) as page:
        for line in page.read().decode().splitlines():
            if line.startswith(f'writ_admission_limit{{route="{route}"}}'):
                return float(line.rsplit(" ", 1)[1])
    return None


async def serial_route(scene: Scene, tmp_path: Path, name: str, *declared: str, work: float = WORK) -> str:
    """A one-at-a-time server registered (with ``declared`` options) and permitted; its route,
    warmed: its session open and a baseline taken (a call of ``work`` seconds)."""
    server = f"{name}-{scene.suffix}"
    await scene.ok("server", "add", server, *declared, "--", sys.executable, str(SERIAL))
    await scene.load_policy(
        f'@id("all-{name}") permit(principal, action, resource) when {{ resource.server == "{server}" }};', tmp_path
    )
    warm = await scene.agent.call(f"{server}/work", {"seconds": work}, timeout=30)
    assert warm.status == "succeeded", warm.reason
    return f"{server}/work"


async def burst_onto(scene: Scene, route: str, n: int) -> list[tuple[ev.Receipt, float]]:
    """``n`` calls submitted at once: each one's receipt, and when it came (seconds from the burst)."""
    began = time.monotonic()
    burst = [await scene.agent.submit(route, {"seconds": WORK}) for _ in range(n)]

    async def answer(intent_id: str) -> tuple[ev.Receipt, float]:
        receipt = await scene.receipt(intent_id, timeout=60)
        return receipt, time.monotonic() - began

    return await asyncio.gather(*(answer(s.intent_id) for s in burst))


async def test_a_burst_on_a_server_declared_one_at_a_time_is_answered_at_once_past_one_call(
    scene: Scene, tmp_path: Path
) -> None:
    route = await serial_route(scene, tmp_path, "serial1", "--max-concurrency", "1")
    answers = await burst_onto(scene, route, FIRST)
    refused = [(r, at) for r, at in answers if r.code == "overloaded"]
    ran = [r for r, _ in answers if r.code != "overloaded"]
    assert len(refused) >= FIRST // 2, Counter((r.status, r.code) for r, _ in answers)
    assert ran and {r.status for r in ran} == {"succeeded"}, "the calls it took all ran"
    for receipt, at in refused:
        assert receipt.status == "failed" and "did not run" in receipt.reason, receipt.reason
        assert at < FIRST * WORK / 2, f"an overloaded answer came after {at:.1f} s: not prompt"
        assert (retry_after(receipt) or 0) >= 0.1, receipt.result
        kinds = [type(e.payload) for e in await scene.history(receipt.intent_id)]
        assert ev.ExecutionStarted not in kinds, "an overloaded call never started"
    stored = await direct_get_batch(
        scene.operator, subjects.LEDGER_STREAM, subjects.agent_receipts(scene.agent.agent_id)
    )
    per_intent = Counter(decode(m.data).envelope.intent_id for m in stored)
    submitted = [r.intent_id for r, _ in answers]
    assert {i: per_intent[i] for i in submitted} == dict.fromkeys(submitted, 1), "exactly one receipt per intent"
    # Callers that keep coming, each back after its retry-after: the calls it takes never overlap.
    stop = asyncio.Event()

    async def caller() -> None:
        while not stop.is_set():
            receipt = await scene.agent.call(route, {"seconds": WORK}, timeout=60)
            assert receipt.code in {"ok", "overloaded"}, receipt
            if receipt.code == "ok":
                ran.append(receipt)
            await asyncio.sleep(retry_after(receipt) or 0.0)

    callers = [asyncio.create_task(caller()) for _ in range(3)]
    await asyncio.sleep(8 * WORK)
    stop.set()
    await asyncio.gather(*callers)
    assert len(ran) >= 4, ran
    spans = []
    for receipt in ran:
        history = await scene.history(receipt.intent_id)
        started = [parse_time(e.envelope.occurred_at) for e in history if isinstance(e.payload, ev.ExecutionStarted)]
        ended = [parse_time(e.envelope.occurred_at) for e in history if isinstance(e.payload, ev.ExecutionSucceeded)]
        spans.append((started[0], ended[0]))
    spans.sort()
    for (_, ended), (started, _) in itertools.pairwise(spans):
        assert started >= ended, f"two calls at once on a server declared to take one: {spans}"
    again = await scene.agent.call(route, {"seconds": 0.01}, timeout=30)
    assert again.status == "succeeded", again.reason


async def test_a_burst_on_a_struggling_route_gets_overloaded_answers_and_one_receipt_each(
    scene: Scene, tmp_path: Path
) -> None:
    route = await serial_route(scene, tmp_path, "serial")
    server = route.partition("/")[0]
    first = [await scene.agent.submit(route, {"seconds": WORK}) for _ in range(FIRST)]
    waits = [asyncio.ensure_future(scene.receipt(s.intent_id, timeout=60)) for s in first]
    # The calls queue at the tool: each ends later than the one before, and the limit comes down.
    for done, receipt in enumerate(asyncio.as_completed(waits), start=1):
        await receipt
        if done == 9:
            break
    limit = route_limit(scene, route)
    assert limit is not None and limit < 32, f"the route's limit was cut from 32: {limit}"

    answers = await burst_onto(scene, route, BURST)
    refused = [(r, at) for r, at in answers if r.code == "overloaded"]
    assert len(refused) >= BURST // 2, Counter((r.status, r.code) for r, _ in answers)
    assert {r.code for r, _ in answers} <= {"ok", "overloaded"}
    for receipt, at in refused:
        assert receipt.status == "failed" and "did not run" in receipt.reason, receipt.reason
        assert at < BURST * WORK, f"an overloaded answer came after {at:.1f} s: not prompt"
        wait = retry_after(receipt)
        assert wait is not None and 0.1 <= wait <= 30, receipt.result
        kinds = [type(e.payload) for e in await scene.history(receipt.intent_id)]
        assert ev.ExecutionStarted not in kinds, "an overloaded call never started"
    assert {r.status for r in await asyncio.gather(*waits)} == {"succeeded"}, "the first calls all ran"

    submitted = [*(s.intent_id for s in first), *(r.intent_id for r, _ in answers)]
    stored = await direct_get_batch(
        scene.operator, subjects.LEDGER_STREAM, subjects.agent_receipts(scene.agent.agent_id)
    )
    per_intent = Counter(decode(m.data).envelope.intent_id for m in stored)
    assert {i: per_intent[i] for i in submitted} == dict.fromkeys(submitted, 1), "exactly one receipt per intent"
    log = (scene.plane.data_dir / "logs" / "executor.log").read_text()
    assert f"admission {route}: limit 32 -> " in log, "every adjustment is logged with old and new value"
    where = subjects.admission_subject(server, "adjusted")
    recorded = [decode(m.data).payload for m in await direct_get_batch(scene.operator, subjects.EXECUTOR_STREAM, where)]
    assert any(
        isinstance(p, ev.AdmissionAdjusted) and p.tool == "work" and p.old_limit == 32 > p.new_limit for p in recorded
    ), f"the cut that persists is recorded as an event, with old and new value: {recorded}"

    # The burst is over: after the retry-after, the route takes a call again.
    await asyncio.sleep(max(retry_after(r) or 0 for r, _ in refused))
    again = await scene.agent.call(route, {"seconds": 0.01}, timeout=30)
    assert again.status == "succeeded", again.reason


async def test_the_sdk_follows_an_overloaded_answers_retry_after_when_asked_and_stays_idempotent(
    scene: Scene, tmp_path: Path
) -> None:
    route = await serial_route(scene, tmp_path, "serialr", "--max-concurrency", "1")
    long = await scene.agent.submit(route, {"seconds": 6 * WORK})
    await scene.wait_status(long.intent_id, "executing")

    plain = await scene.agent.call(route, {"seconds": 0.01}, timeout=30)
    assert plain.code == "overloaded", "not asked to retry: the answer as it came"
    key = f"retry-{scene.suffix}"
    followed = await scene.agent.call(route, {"seconds": 0.01}, timeout=30, idempotency_key=key, overloaded_retries=20)
    assert followed.status == "succeeded", followed.reason
    first = await scene.receipt(derive_intent_id(scene.agent.agent_id, key))
    assert first.code == "overloaded", "the first try was answered overloaded, and kept its receipt"
    (submitted,) = [e.payload for e in await scene.history(followed.intent_id) if e.type == "intent.submitted"]
    assert submitted.idempotency_key.startswith(f"{key}#overloaded-"), "a retry: a new intent, its key derived"

    again = await scene.agent.call(route, {"seconds": 0.01}, timeout=30, idempotency_key=key, overloaded_retries=20)
    assert again.intent_id == followed.intent_id and again.status == "succeeded", "the same key: the same intents"


async def test_a_call_its_deadline_leaves_no_time_for_ends_expired_and_is_never_sent(
    scene: Scene, tmp_path: Path
) -> None:
    """An intent that reaches the executor with less time left than its route's fastest call of
    late: sent, the call would only time out (this tool, idempotent, then ended ``failed``,
    call_interrupted; a non-idempotent one ends ``outcome_unknown``, for a person to settle). It
    ends expired, and the call is never sent."""
    route = await serial_route(scene, tmp_path, "late", work=1.0)
    late = await scene.agent.submit(route, {"seconds": 1.0}, deadline_seconds=0.6)
    receipt = await scene.receipt(late.intent_id, timeout=30)
    assert (receipt.status, receipt.stage) == ("expired", "execute"), receipt.reason
    assert "not called" in receipt.reason and "less than the 1." in receipt.reason, receipt.reason
    assert receipt.result is None
    # With time for it, the same call runs.
    ran = await scene.agent.call(route, {"seconds": 1.0}, timeout=30)
    assert ran.status == "succeeded", ran.reason
