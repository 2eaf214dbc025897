"""The admission loop against the real services, nats-server and an MCP server: a route's limit
raised in memory on good latency is recorded as an event (signal, old and new value, baseline);
a restarted executor resumes it from the log; the calls then become slower and no more go
through, and the loop reverts the raise with an event saying why; the Plane page lists both.

The callers set the tool's latency themselves (``paced/parallel``), so the test drives the loop's
mechanics (record, resume, verify, revert) deterministically; how the rules judge is unit-tested
in tests/unit/test_admission_tuning.py."""

from __future__ import annotations

import asyncio
import sys
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio
from inprocess import DEFAULT_POLICY, SERVERS, Spine, open_spine

from writ_common import commands, metrics, subjects
from writ_common import events as ev
from writ_common.bus import direct_get_batch, stored
from writ_common.service import Service
from writ_common.settings import WritSettings
from writ_executor.admission import Admission
from writ_executor.admission_loop import AdmissionLoop
from writ_ledger.plane import PlaneReader

pytestmark = [pytest.mark.integration, pytest.mark.asyncio(loop_scope="session")]

SERVER = "paced-admission"
ROUTE = f"{SERVER}/parallel"
CALLERS = 4  # never past the route's limit: no call is shed
LIMITS = {
    "admission_initial_limit": 4,
    "admission_max_limit": 8,
    "admission_max_step": 1,
    "admission_verify_seconds": 3.0,
    "admission_cooldown_seconds": 60.0,
    "admission_streak": 1000,  # no cut in memory: the slow phase is judged, not shed
}


@pytest_asyncio.fixture(scope="module", loop_scope="session")
async def admitted(
    nats_server: str, redis_server: str, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Spine]:
    data_dir = tmp_path_factory.getbasetemp() / "inprocess-plane"  # the shared ledger key
    async with open_spine(nats_server, redis_server, data_dir, **LIMITS) as spine:
        await commands.call(spine.nc, "policy", "load", {"cedar": DEFAULT_POLICY})
        body = {"name": SERVER, "command": sys.executable, "args": [str(SERVERS / "paced_stdio.py")]}
        await commands.call(spine.nc, "registry", "add_server", body, timeout=30.0)
        yield spine


async def admission_events(spine: Spine) -> list[ev.Payload]:
    where = subjects.admission_subject(SERVER, "*")
    return [stored(m).payload for m in await direct_get_batch(spine.nc, subjects.EXECUTOR_STREAM, where)]


async def until(spine: Spine, kind: type[ev.Payload], within: float) -> list[ev.Payload]:
    for _ in range(int(within / 0.1)):
        events = await admission_events(spine)
        if any(isinstance(e, kind) for e in events):
            return events
        await asyncio.sleep(0.1)
    raise AssertionError(f"no {kind.__name__} for {ROUTE} within {within}s: {await admission_events(spine)}")


async def resumed_limit(nats_server: str, nc_spine: Spine) -> int:
    """What a restarted executor's admission starts from: a fresh one, folded from the log."""
    settings = WritSettings(nats_url=nats_server, **LIMITS)  # type: ignore[arg-type]
    admission = Admission(settings)
    loop = AdmissionLoop(Service("executor", settings), settings, admission)
    await loop.follower.start(nc_spine.nc)
    try:
        return admission.limits.of(ROUTE).limit
    finally:
        await loop.follower.stop()


async def plane_loop_changes(spine: Spine, nats_server: str) -> list[dict[str, object]]:
    reader = PlaneReader(spine.nc, WritSettings(nats_url=nats_server))
    await reader.start()
    try:
        rows: list[dict[str, object]] = (await reader.read())["loop_changes"]
        return rows
    finally:
        await reader.stop()


async def test_a_raise_is_recorded_resumed_and_reverted_when_it_made_calls_slower(
    admitted: Spine, nats_server: str
) -> None:
    seconds = [0.05]
    done = asyncio.Event()

    async def caller() -> None:
        while not done.is_set():
            receipt = await admitted.agent.call(ROUTE, {"seconds": seconds[0]}, timeout=30)
            assert receipt.status == "succeeded", receipt.reason

    callers = [asyncio.create_task(caller()) for _ in range(CALLERS)]
    try:
        # Good latency with the route in use: the limiter raises it, the loop records one step.
        (raised,) = await until(admitted, ev.AdmissionAdjusted, within=30)
        assert isinstance(raised, ev.AdmissionAdjusted)
        assert await resumed_limit(nats_server, admitted) == 5, "a restart resumes the recorded limit"
        # Now every call is at least ten times slower, and half as many go through at most
        # (sized by the baseline's throughput, however busy the machine is).
        seconds[0] = min(5.0, max(1.0, 2 * CALLERS / max(raised.signals.throughput, 0.1)))
        events = await until(admitted, ev.AdmissionReverted, within=45)
    finally:
        done.set()
        await asyncio.gather(*callers)

    adjusted, reverted = events[0], events[-1]
    assert len(events) == 2, events  # one change at a time: nothing between the raise and its verdict
    assert isinstance(adjusted, ev.AdmissionAdjusted)
    assert (adjusted.server, adjusted.tool, adjusted.old_limit, adjusted.new_limit) == (SERVER, "parallel", 4, 5)
    assert adjusted.signals.calls > 0 and adjusted.signals.p99_ms is not None and adjusted.signals.target_ms
    assert "raised 4 -> 5" in adjusted.reason
    assert isinstance(reverted, ev.AdmissionReverted), reverted
    assert (reverted.from_limit, reverted.to_limit) == (5, 4)
    assert reverted.baseline == adjusted.signals, "judged against the baseline recorded with the change"
    assert reverted.after.p99_ms is not None and adjusted.signals.p99_ms is not None
    assert reverted.after.p99_ms > adjusted.signals.p99_ms
    assert "slower, and no more calls went through" in reverted.reason
    assert metrics.ADMISSION_LIMIT.labels(ROUTE)._value.get() == 4, "the executor's limit is back"
    rows = await plane_loop_changes(admitted, nats_server)
    shown = [(r["step"], r["from"], r["to"]) for r in rows if r["of"] == ROUTE]
    assert shown == [("reverted", 5, 4), ("adjusted", 4, 5)], "the Plane page lists both, newest first"
