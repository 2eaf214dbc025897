"""Waiting for the state a test asserts, instead of sleeping and hoping: poll until it holds or a
deadline passes, then fail naming what never happened. Every tier uses these (no hand-rolled loops)."""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")
Predicate = Callable[[], bool | Awaitable[bool]]
PAUSE = 0.05  # seconds between looks


async def reached(predicate: Predicate, timeout: float) -> bool:
    """Poll ``predicate`` (plain or async) until it holds or ``timeout`` passes."""
    deadline = time.monotonic() + timeout
    while True:
        result = predicate()
        if await result if inspect.isawaitable(result) else result:
            return True
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(PAUSE)


async def wait_until(predicate: Predicate, timeout: float, what: str = "condition") -> None:
    """Wait until ``predicate`` holds.

    Raises:
        AssertionError: it did not within ``timeout`` seconds.
    """
    if not await reached(predicate, timeout):
        raise AssertionError(f"{what}: not reached within {timeout:g}s")


async def eventually(produce: Callable[[], T | Awaitable[T | None] | None], timeout: float, what: str) -> T:
    """The first value ``produce`` (plain or async) returns that is not None.

    Raises:
        AssertionError: only None within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = produce()
        if inspect.isawaitable(value):
            value = await value
        if value is not None:
            return value  # type: ignore[return-value]
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not reached within {timeout:g}s")
        await asyncio.sleep(PAUSE)


def eventually_sync(produce: Callable[[], T | None], timeout: float, what: str, pause: float = 0.1) -> T:
    """:func:`eventually` for synchronous tests (e.g. driving the CLI)."""
    deadline = time.monotonic() + timeout
    while (value := produce()) is None:
        if time.monotonic() >= deadline:
            raise AssertionError(f"{what}: not reached within {timeout:g}s")
        time.sleep(pause)
    return value
