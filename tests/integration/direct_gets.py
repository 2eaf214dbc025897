"""The Direct Gets a test's own connection asks of the intents stream, and a sweeper's index
started afresh from a resume point with those it asked.

The services' sweepers ask the same filters of the same stream every second: a watch on the API
subject sees theirs too. Requests are told apart by the inbox their answers go to (one per
connection), learned from a read of nothing at the start.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from typing import Any

from nats.aio.client import Client

from writ_common import subjects
from writ_common.bus import direct_get_batch
from writ_common.sweeper import OpenIntents, ResumePoint

PROBE = f"{subjects.INTENT_PREFIX}.probe.nothing.submitted"  # on the stream's subjects; never stored


@contextlib.asynccontextmanager
async def direct_gets_of(nc: Client) -> AsyncIterator[list[dict[str, Any]]]:
    """Inside: the body of each Direct Get ``nc`` asks of the intents stream, filled when the block
    ends (the watch's callback runs in its own task)."""
    seen: list[tuple[str, dict[str, Any]]] = []

    async def on_request(msg: Any) -> None:
        seen.append((msg.reply or "", json.loads(msg.data or b"{}")))

    asked: list[dict[str, Any]] = []
    watch = await nc.subscribe(f"$JS.API.DIRECT.GET.{subjects.INTENTS_STREAM}", cb=on_request)
    try:
        await direct_get_batch(nc, subjects.INTENTS_STREAM, PROBE, limit=1)
        yield asked
        await nc.flush()
        await asyncio.sleep(0.1)
    finally:
        await watch.unsubscribe()
    inbox = next(reply.rpartition(".")[0] for reply, body in seen if body.get("next_by_subj") == PROBE)
    asked.extend(
        body for reply, body in seen if reply.rpartition(".")[0] == inbox and body.get("next_by_subj") != PROBE
    )


async def resumed_index(nc: Client, point: ResumePoint | None) -> tuple[OpenIntents, list[dict[str, Any]]]:
    """An index that begins at ``point``, caught up once, and the body of each Direct Get it asked."""

    async def resume() -> ResumePoint | None:
        return point

    async with direct_gets_of(nc) as asked:
        index = OpenIntents()
        index.resume_with(resume)
        await index.catch_up(nc)
    return index, asked
