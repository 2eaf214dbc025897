"""Waiting for a condition in tests: poll it, never sleep a fixed time."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable

Predicate = Callable[[], bool | Awaitable[bool]]


async def reached(predicate: Predicate, timeout: float) -> bool:
    """Poll ``predicate`` (plain or async) every 50 ms until it holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if await result if inspect.isawaitable(result) else result:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(0.05)
