"""A tool server that hangs (or is just slow) holds only its own calls: another agent's call to
another tool is not queued behind it, and calls to one server run side by side."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from scene import Scene

from writ_common import events as ev
from writ_common.envelope import parse_time

pytestmark = [pytest.mark.security, pytest.mark.asyncio(loop_scope="session")]


def permit_all(server: str) -> str:
    return f'@id("all-{server}") permit(principal, action, resource) when {{ resource.server == "{server}" }};'


async def test_a_hanging_tool_does_not_hold_another_call(scene: Scene, tmp_path: Path) -> None:
    await scene.load_policy(permit_all(scene.server), tmp_path)
    hanging = await scene.agent.submit(f"{scene.server}/slow", {"seconds": 12, "token": f"hang-{scene.suffix}"})
    await scene.wait_status(hanging.intent_id, "executing")
    # While it hangs, a quick call goes through at once (one at a time, it would wait 12 s).
    quick = await scene.agent.call(f"{scene.server}/count", {"token": scene.suffix}, timeout=6)
    assert quick.status == "succeeded", quick.reason
    assert await scene.status(hanging.intent_id) == "executing", "the slow call is still running"


async def test_calls_to_one_server_run_side_by_side(scene: Scene, tmp_path: Path) -> None:
    await scene.load_policy(permit_all(scene.server), tmp_path)
    submitted = [
        await scene.agent.submit(f"{scene.server}/slow", {"seconds": 1.5, "token": f"{scene.suffix}-{n}"})
        for n in range(4)
    ]
    receipts = await asyncio.gather(*(scene.receipt(s.intent_id, timeout=60) for s in submitted))
    assert {r.status for r in receipts} == {"succeeded"}
    spans = []
    for s in submitted:
        events = await scene.history(s.intent_id)
        began = next(e for e in events if isinstance(e.payload, ev.ExecutionStarted))
        ended = next(e for e in events if isinstance(e.payload, ev.ExecutionSucceeded))
        spans.append((parse_time(began.envelope.occurred_at), parse_time(ended.envelope.occurred_at)))
    # Every call started before any of them ended: they ran at the same time, not in a queue.
    assert max(start for start, _ in spans) < min(end for _, end in spans), spans
