"""Reading the session plane's streams as the operator, for e2e assertions."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import nats
from nats.aio.client import Client

from writ.runtime.supervisor import Plane
from writ_common import subjects
from writ_common.bus import direct_get_batch


@asynccontextmanager
async def as_operator(plane: Plane) -> AsyncIterator[Client]:
    nc = await nats.connect(plane.nats_url, **plane.settings.bus_options())
    try:
        yield nc
    finally:
        await nc.close()


async def stored_on(plane: Plane, subject: str) -> int:
    """How many events the intents stream holds on ``subject``."""
    async with as_operator(plane) as nc:
        return len(await direct_get_batch(nc, subjects.INTENTS_STREAM, subject))
