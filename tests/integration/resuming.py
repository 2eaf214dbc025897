"""A sweeper's index started afresh from a resume point, with the Direct Get requests it sent."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from nats.aio.client import Client

from writ_common import subjects
from writ_common.sweeper import OpenIntents, ResumePoint


async def resumed_index(nc: Client, point: ResumePoint | None) -> tuple[OpenIntents, list[dict[str, Any]]]:
    """An index that begins at ``point``, caught up once, and the body of each Direct Get request
    sent to the intents stream meanwhile (by anyone: run it where nothing else reads)."""
    asked: list[dict[str, Any]] = []

    async def on_request(msg: Any) -> None:
        asked.append(json.loads(msg.data or b"{}"))

    async def resume() -> ResumePoint | None:
        return point

    watch = await nc.subscribe(f"$JS.API.DIRECT.GET.{subjects.INTENTS_STREAM}", cb=on_request)
    try:
        index = OpenIntents()
        index.resume_with(resume)
        await index.catch_up(nc)
        await nc.flush()
        await asyncio.sleep(0.1)  # the watch's callback runs in its own task
    finally:
        await watch.unsubscribe()
    return index, asked
